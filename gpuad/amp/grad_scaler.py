"""GradScaler: dynamic loss scaling for float16 training (torch.amp.GradScaler).

The loss is multiplied by `scale` before backward, so small float16 gradients do
not underflow; unscale_ divides the gradients by it again (before clipping) and
notes whether any is inf or NaN; step skips the optimizer's step when one was;
update halves the scale after such a step (backoff_factor) and doubles it after
growth_interval clean steps in a row (growth_factor), as torch's does.

>>> import gpuad
>>> w = gpuad.ones(2, requires_grad=True, device="cpu")
>>> opt = gpuad.optim.SGD([w], lr=0.1)
>>> scaler = gpuad.amp.GradScaler(init_scale=1024.0)
>>> scaler.scale((w * 3.0).sum()).backward()
>>> scaler.step(opt); scaler.update()
>>> [round(v, 6) for v in w.tolist()], scaler.get_scale()
([0.7, 0.7], 1024.0)
"""
from ..backends import namespace_of, writeable
from ..tensor import Tensor

_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class GradScaler:
    """GradScaler(device="cuda", init_scale=2.**16, growth_factor=2.0, backoff_factor=0.5,
    growth_interval=2000, enabled=True)."""

    def __init__(self, device="cuda", init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True):
        if growth_factor <= 1.0:
            raise ValueError("gpuad.amp.GradScaler: growth_factor should be > 1")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError("gpuad.amp.GradScaler: backoff_factor should be < 1")
        self.device = str(device)
        self._enabled = bool(enabled)
        self._scale = float(init_scale)
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer = {}          # id(optimizer) -> {"stage", "found_inf"}

    # -- scaling ---------------------------------------------------------------------
    def scale(self, outputs):
        """outputs * scale (a Tensor, or an iterable of them, structure kept)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            return outputs * self._scale
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if isinstance(outputs, dict):
            return {k: self.scale(v) for k, v in outputs.items()}
        raise TypeError(f"gpuad.amp.GradScaler.scale: outputs must be Tensors, got {type(outputs).__name__}")

    def _state(self, optimizer):
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": False})

    def unscale_(self, optimizer):
        """Divide the optimizer's gradients by the scale, in place, and note whether any
        holds an inf or a NaN. Once per optimizer between updates (as torch)."""
        if not self._enabled:
            return
        st = self._state(optimizer)
        if st["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if st["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        inv = 1.0 / self._scale
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = g.data
                xp = namespace_of(data)
                # one pass to find a non-finite value, one to scale (reads 2N, writes N)
                found = found or not bool(xp.isfinite(data).all())
                g.data = xp.multiply(data, inv, out=data if writeable(data) else None)   # (a weak float: data's dtype)
        st["found_inf"], st["stage"] = found, _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """optimizer.step(), unless the gradients held inf or NaN (then skipped: None)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        st = self._state(optimizer)
        if st["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st["stage"] == _READY:
            self.unscale_(optimizer)
        result = None if st["found_inf"] else optimizer.step(*args, **kwargs)
        st["stage"] = _STEPPED
        return result

    def update(self, new_scale=None):
        """Back off after a step with inf/NaN gradients, grow after growth_interval clean
        ones; or set new_scale."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale.item() if isinstance(new_scale, Tensor) else new_scale)
        else:
            if not self._per_optimizer:
                raise AssertionError("No inf checks were recorded prior to update.")
            if any(st["found_inf"] for st in self._per_optimizer.values()):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale *= self._growth_factor
                    self._growth_tracker = 0
        self._per_optimizer = {}

    # -- state ------------------------------------------------------------------------
    def get_scale(self):
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self):
        return self._growth_factor

    def set_growth_factor(self, v):
        self._growth_factor = float(v)

    def get_backoff_factor(self):
        return self._backoff_factor

    def set_backoff_factor(self, v):
        self._backoff_factor = float(v)

    def get_growth_interval(self):
        return self._growth_interval

    def set_growth_interval(self, v):
        self._growth_interval = int(v)

    def is_enabled(self):
        return self._enabled

    def state_dict(self):
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state):
        if not self._enabled:
            return
        if len(state) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                               "instance of GradScaler.")
        self._scale = float(state["scale"])
        self._growth_factor = float(state["growth_factor"])
        self._backoff_factor = float(state["backoff_factor"])
        self._growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])

