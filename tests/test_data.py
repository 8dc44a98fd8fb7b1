"""gpuad.utils.data (#26) against torch.utils.data: the same batches, orders and sizes."""
import numpy as np
import pytest

import gpuad
from gpuad.utils.data import (DataLoader, Dataset, IterableDataset, TensorDataset, ConcatDataset, Subset,
                              random_split, BatchSampler, SequentialSampler)

torch = pytest.importorskip("torch")
R = np.random.default_rng(27)
X, Y = R.standard_normal((10, 3)), R.integers(0, 4, 10)


def _flat(batches):
    return [tuple(t.numpy() if hasattr(t, "numpy") else t for t in b) for b in batches]


@pytest.mark.parametrize("kw", [dict(batch_size=3), dict(batch_size=3, drop_last=True), dict(batch_size=10),
                                dict(batch_size=4, num_workers=2)], ids=str)
def test_sequential_batches_equal_torchs(kw):
    g = DataLoader(TensorDataset(gpuad.tensor(X), gpuad.tensor(Y)), **kw)
    t = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(Y)), **kw)
    assert len(g) == len(t)
    for (gx, gy), (tx, ty) in zip(g, t, strict=True):
        np.testing.assert_array_equal(gx.numpy(), tx.numpy())
        np.testing.assert_array_equal(gy.numpy(), ty.numpy())


def test_shuffle_is_a_permutation_seeded_by_the_generator_and_new_each_epoch():
    ds = TensorDataset(gpuad.arange(20))
    a = [b[0].tolist() for b in DataLoader(ds, batch_size=5, shuffle=True, generator=gpuad.Generator(3))]
    b = [b[0].tolist() for b in DataLoader(ds, batch_size=5, shuffle=True, generator=gpuad.Generator(3))]
    assert a == b and sorted(sum(a, [])) == list(range(20)) and sum(a, []) != list(range(20))
    loader = DataLoader(ds, batch_size=20, shuffle=True, generator=gpuad.Generator(4))
    assert next(iter(loader))[0].tolist() != next(iter(loader))[0].tolist()      # another order each epoch
    gpuad.manual_seed(5)
    c = next(iter(DataLoader(ds, batch_size=20, shuffle=True)))[0].tolist()
    gpuad.manual_seed(5)
    assert next(iter(DataLoader(ds, batch_size=20, shuffle=True)))[0].tolist() == c


def test_collate_keeps_structure_as_torchs():
    class Pairs(Dataset):
        def __getitem__(self, i):
            return {"x": np.full(2, i, np.float32), "y": i, "name": f"s{i}", "t": (gpuad.tensor([i]), i * 0.5)}

        def __len__(self):
            return 5
    batch = next(iter(DataLoader(Pairs(), batch_size=3)))
    assert batch["x"].shape == (3, 2) and batch["y"].tolist() == [0, 1, 2] and batch["name"] == ["s0", "s1", "s2"]
    assert batch["t"][0].shape == (3, 1) and batch["t"][1].tolist() == [0.0, 0.5, 1.0]
    custom = next(iter(DataLoader(Pairs(), batch_size=2, collate_fn=lambda b: len(b))))
    assert custom == 2
    single = next(iter(DataLoader(Pairs(), batch_size=None)))
    assert single["y"] == 0


def test_iterable_datasets_stream_in_batches():
    class Count(IterableDataset):
        def __iter__(self):
            return iter(range(7))
    assert [b.tolist() for b in DataLoader(Count(), batch_size=3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.tolist() for b in DataLoader(Count(), batch_size=3, drop_last=True)] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="IterableDataset takes no shuffle"):
        DataLoader(Count(), shuffle=True)


def test_random_split_subset_concat_and_samplers():
    a, b = random_split(range(10), [7, 3], generator=gpuad.Generator(0))
    assert len(a) == 7 and len(b) == 3 and sorted(list(a) + list(b)) == list(range(10))
    c, d, e = random_split(range(10), [0.5, 0.3, 0.2])
    assert (len(c), len(d), len(e)) == (5, 3, 2)
    with pytest.raises(ValueError, match="does not equal the length"):
        random_split(range(10), [3, 3])
    cat = ConcatDataset([Subset(range(10), [1, 2]), range(3)])
    assert [cat[i] for i in range(len(cat))] == [1, 2, 0, 1, 2] and cat[-1] == 2
    assert list(BatchSampler(SequentialSampler(range(5)), 2, drop_last=False)) == \
        list(torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(5)), 2, drop_last=False))
    with pytest.raises(ValueError, match="size mismatch"):
        TensorDataset(gpuad.ones(3), gpuad.ones(4))


def test_workers_keep_the_order_and_a_distributed_sampler_plugs_in():
    from gpuad.distributed import DistributedSampler
    ds = TensorDataset(gpuad.arange(12))
    assert [b[0].tolist() for b in DataLoader(ds, batch_size=5, num_workers=2)] == \
        [list(range(0, 5)), list(range(5, 10)), [10, 11]]
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    got = sum((b[0].tolist() for b in DataLoader(ds, batch_size=4, sampler=sampler)), [])
    want = list(torch.utils.data.DistributedSampler(torch.utils.data.TensorDataset(torch.arange(12)), num_replicas=2,
                                                    rank=1, shuffle=False))
    assert got == want


def test_progress_bar_writes_to_stderr(capsys):
    list(DataLoader(TensorDataset(gpuad.arange(6)), batch_size=2, progress=True))
    err = capsys.readouterr().err
    assert "3/3" in err and "batches/s" in err
