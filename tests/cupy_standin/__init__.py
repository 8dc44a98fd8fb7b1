"""A strict CuPy stand-in: a fake `cupy` (with `cupy.cuda`, `cupyx` and the parts of
CuPy's internals gpuad touches) backed by numpy, that refuses what CuPy refuses. Tests only.

`install()` puts it in sys.modules as cupy, so gpuad's device path (the cupy
namespace, the cupy kernel provider, CUDA-graph capture, NCCL) runs on the CPU as it
would on a GPU. What it refuses, as CuPy 14.2 does:

- numpy arrays as operands of its functions and ufuncs ("Unsupported type
  numpy.ndarray"), as `x[...] = value`, and as copyto's source;
- implicit conversion to numpy (`np.asarray(x)`, `__array__`): `.get()` only;
- `.flags` beyond c_contiguous, f_contiguous, owndata (fnc, forc);
- keywords its functions do not take (from CuPy's own signatures, cupy_api.json:
  a ufunc takes out=, dtype=, casting=, never where= or order=);
- names CuPy does not have (cupy.erf: it is cupyx.scipy.special.erf, which makes
  float64 of float16);
- a scalar condition in cupy.where;
- while a stream is capturing: any host read (.get(), .item(), bool(), int(),
  float(), tolist) and any host-to-device copy (cupy.asarray of host data).

Memory comes from a pool with one arena per stream, as CuPy's: a block freed on
one stream is not reused on another. Allocations go through the current
allocator (cupy.cuda.using_allocator) and are reported to MemoryHooks.

A capture records every operation (its numpy function, operands and result
buffer); Graph.launch() runs them again on the same buffers, as a CUDA graph
relaunches kernels on the pointers it baked in. ElementwiseKernel bodies (CUDA C)
are translated to numpy for the few forms gpuad writes.
"""
import contextlib
import itertools
import json
import math
import os
import re
import sys
import types
import weakref

import numpy as np

API = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_api.json")))
FUNCTIONS = API["functions"]          # name -> parameter names (None: unknown)
UFUNCS = API["ufuncs"]                # name -> (nin, nout)
_UFUNC_KW = {"out", "dtype", "casting"}


class CaptureError(RuntimeError):
    """What CUDA refuses while a stream is capturing (cudaErrorStreamCaptureUnsupported)."""


# -- streams and capture ------------------------------------------------------------------------

class _State:
    def __init__(self):
        self.streams = []             # the `with stream:` stack
        self.capturing = None         # the Stream capturing now
        self.tape = None              # what the capture recorded
        self.hooks = []
        self.allocators = []
        self.compute_type = {}


S = _State()


def _refuse_host(what):
    if S.capturing is not None:
        raise CaptureError(f"cudaErrorStreamCaptureUnsupported: {what} while stream {S.capturing.ptr:#x} "
                           f"is capturing")


def _record(fn):
    """Run fn() now; while capturing only keep it, to run at each launch of the graph (as
    CUDA does: work issued during a capture is recorded, not executed)."""
    if S.capturing is not None:
        S.tape.append(fn)
    else:
        fn()


def _poison(buf):
    """What a captured kernel's output holds before the graph is launched: garbage
    (NaN or 0xA5 bytes here), so host logic that peeked at it would be caught."""
    if buf is not None and buf.size:
        if buf.dtype.kind in "fc":
            buf.fill(np.nan)
        else:
            buf.reshape(-1).view(np.uint8).fill(0xA5)      # (a 0-d array has no byte view of its own)


_ptrs = itertools.count(0x7f0000001000, 0x100)


class Event:
    def __init__(self, *args, **kw):
        self.done = True

    def record(self, stream=None):
        self.done = True

    def synchronize(self):
        _refuse_host("Event.synchronize")


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_ptrs)
        self._capture = None

    def __enter__(self):
        S.streams.append(self)
        return self

    def __exit__(self, *exc):
        S.streams.pop()

    def use(self):
        S.streams[:] = [self]
        return self

    def synchronize(self):
        _refuse_host("Stream.synchronize")

    def record(self, event=None):
        e = event or Event()
        e.record(self)
        return e

    def wait_event(self, event):
        pass

    @property
    def done(self):
        return True

    def begin_capture(self, mode=None):
        if S.capturing is not None:
            raise CaptureError("cudaErrorIllegalState: a capture is already running")
        if get_current_stream() is not self:
            raise CaptureError("begin_capture on a stream that is not the current one: the work would not "
                               "be captured")
        S.capturing, S.tape = self, []

    def end_capture(self):
        if S.capturing is not self:
            raise CaptureError("cudaErrorIllegalState: this stream is not capturing")
        graph = Graph(S.tape)
        S.capturing, S.tape = None, None
        return graph

    def is_capturing(self):
        return S.capturing is self


Stream.null = Stream(null=True)


def get_current_stream(device_id=None):
    return S.streams[-1] if S.streams else Stream.null


class Graph:
    """The operations a capture recorded, run again by launch() on the same buffers."""

    def __init__(self, tape):
        self.tape = tape
        self.launches = 0

    def launch(self, stream=None):
        self.launches += 1
        for fn in self.tape:
            fn()

    def upload(self, stream=None):
        pass


# -- memory --------------------------------------------------------------------------------------

class Memory:
    __slots__ = ("buf", "size", "ptr", "stream", "__weakref__")


class MemoryPointer:
    """A block of device memory (numpy bytes here) and where in it; returned to its pool
    when the last array using it dies."""
    __slots__ = ("mem", "ptr", "__weakref__")

    def __init__(self, mem, offset=0):
        self.mem = mem
        self.ptr = mem.ptr + offset


class MemoryPool:
    """One free list per stream and block size, as CuPy's pool keeps one arena per stream."""

    def __init__(self):
        self.free = {}
        self._used = self._total = 0

    def malloc(self, asked):
        size = max(512, (asked + 511) // 512 * 512)         # CuPy rounds blocks to 512 bytes
        stream = get_current_stream().ptr
        blocks = self.free.get((stream, size))
        if blocks:
            mem = blocks.pop()
        else:
            if S.capturing is not None and self._total + size > _CAPACITY:
                raise OutOfMemoryError(f"Out of memory allocating {size:,} bytes (allocated so far: "
                                       f"{self._total:,} bytes).")
            mem = Memory()
            mem.buf = np.empty(size + 64, np.uint8)
            off = (-mem.buf.ctypes.data) % 64
            mem.buf = mem.buf[off:off + size]
            mem.size, mem.ptr, mem.stream = size, mem.buf.ctypes.data, stream
            self._total += size
        self._used += size
        p = MemoryPointer(mem)
        weakref.finalize(p, self._release, mem)
        _LIVE[mem.ptr] = mem
        for h in S.hooks:
            h.malloc_postprocess(device_id=0, size=asked, mem_size=size, mem_ptr=mem.ptr, pmem_id=id(mem))
        return p

    def _release(self, mem):
        self._used -= mem.size
        _LIVE.pop(mem.ptr, None)
        self.free.setdefault((mem.stream, mem.size), []).append(mem)
        for h in list(S.hooks):
            h.free_postprocess(device_id=0, mem_size=mem.size, mem_ptr=mem.ptr, pmem_id=id(mem))

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._total

    def free_bytes(self):
        return self._total - self._used

    def free_all_blocks(self, stream=None):
        for blocks in self.free.values():
            self._total -= sum(m.size for m in blocks)
            blocks.clear()

    def n_free_blocks(self):
        return sum(len(b) for b in self.free.values())


_CAPACITY = 1 << 40
_LIVE = {}                      # base address -> Memory of every live block (NCCL reads by pointer)
_pool = MemoryPool()


def get_default_memory_pool():
    return _pool


def _malloc(nbytes):
    alloc = S.allocators[-1] if S.allocators else _pool.malloc
    return alloc(nbytes)


@contextlib.contextmanager
def using_allocator(allocator=None):
    S.allocators.append(allocator or _pool.malloc)
    try:
        yield
    finally:
        S.allocators.pop()


class MemoryHook:
    name = "hook"

    def __enter__(self):
        S.hooks.append(self)
        return self

    def __exit__(self, *exc):
        S.hooks.remove(self)

    def malloc_postprocess(self, **kw):
        pass

    def free_postprocess(self, **kw):
        pass


class OutOfMemoryError(MemoryError):
    pass


def _block(ptr):
    """(Memory, offset) holding device pointer ptr."""
    for base, mem in _LIVE.items():
        if base <= ptr < base + mem.size:
            return mem, ptr - base
    raise RuntimeError(f"cudaErrorIllegalAddress: {ptr:#x} is not device memory")


# -- the array -----------------------------------------------------------------------------------

class Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a, own):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = own

    fnc = property(lambda self: self.f_contiguous and not self.c_contiguous)
    forc = property(lambda self: self.f_contiguous or self.c_contiguous)

    def __getitem__(self, key):
        return getattr(self, {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous",
                              "OWNDATA": "owndata"}[key])


class _Device:
    def __init__(self, id=None):
        self.id = 0 if id is None else int(id)
        if self.id != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: the stand-in has one device, not {self.id}")
        self.compute_capability = "90"

    def use(self):
        pass

    def synchronize(self):
        _refuse_host("Device.synchronize")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return self.id

    @property
    def mem_info(self):
        return runtime.memGetInfo()

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _np_root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class ndarray:
    """A device array: `_a` the numpy array (a view of a pool block), `_mem` the block,
    `_base` the array it views (as CuPy's .base)."""
    __slots__ = ("_a", "_mem", "_base", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        dtype = np.dtype(dtype)
        n = math.prod(shape) * dtype.itemsize
        self._mem = _malloc(n) if n else None
        self._a = self._mem.mem.buf[:n].view(dtype).reshape(shape) if n else np.empty(shape, dtype)
        if order == "F" and n:
            self._a = self._mem.mem.buf[:n].view(dtype).reshape(shape[::-1]).T
        self._base = None

    # construction without an allocation of its own
    @classmethod
    def _view(cls, a, parent):
        x = object.__new__(cls)
        x._a, x._mem = a, parent._mem
        x._base = parent if parent._base is None else parent._base
        return x

    @classmethod
    def _fresh(cls, a):
        x = cls(a.shape, a.dtype)
        np.copyto(x._a, a, casting="unsafe")
        return x, x._a

    # metadata
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    base = property(lambda self: self._base)
    device = property(lambda self: _Device(0))
    flags = property(lambda self: Flags(self._a, self._base is None))
    T = property(lambda self: _call(np.transpose, (self,), {}))

    @property
    def data(self):
        if self._mem is None:
            return MemoryPointer(_EMPTY_MEM)
        return MemoryPointer(self._mem.mem, self._a.ctypes.data - self._mem.mem.ptr)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.data.ptr, False),
                "version": 3, "strides": self.strides}

    # host transfers: explicit only
    def get(self, stream=None, order="C", out=None, blocking=True):
        _refuse_host(".get()")
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        _refuse_host(".set()")
        np.copyto(self._a, arr)

    def __array__(self, *args, **kw):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def item(self):
        _refuse_host(".item()")
        return self._a.item()

    def tolist(self):
        _refuse_host(".tolist()")
        return self._a.tolist()

    def __bool__(self):
        _refuse_host("bool()")
        return bool(self._a)

    def __int__(self):
        _refuse_host("int()")
        return int(self._a)

    def __float__(self):
        _refuse_host("float()")
        return float(self._a)

    def __index__(self):
        _refuse_host("an index")
        return self._a.__index__()

    def __complex__(self):
        _refuse_host("complex()")
        return complex(self._a)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        return "array(" + np.array2string(self._a, separator=", ") + ")" if S.capturing is None else "array(...)"

    __str__ = __repr__

    def __dlpack__(self, stream=None):
        return self._a.__dlpack__()

    def __dlpack_device__(self):
        return (2, 0)                 # kDLCUDA

    # numpy protocols: numpy's functions run CuPy's of the same name (NEP 13 and 18)
    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        f = getattr(_module, ufunc.__name__, None)
        if f is None:
            return NotImplemented
        if method == "__call__":
            return f(*inputs, **kw)
        m = getattr(f, method, None)
        return NotImplemented if m is None else m(*inputs, **kw)

    def __array_function__(self, func, types_, args, kwargs):
        mod = func.__module__ or ""
        target = _module
        if mod.startswith("numpy.linalg"):
            target = _module.linalg
        f = getattr(target, func.__name__, None)
        if f is None:
            return NotImplemented
        return f(*args, **kwargs)

    # methods: CuPy's ndarray methods, run through the module's functions
    def copy(self, order="C"):
        return _call(np.array, (self,), {"order": order, "copy": True})

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _call(lambda a: a.astype(dtype, order=order), (self,), {})

    def view(self, dtype=None):
        return _call(lambda a: a.view(dtype) if dtype is not None else a.view(), (self,), {})

    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _call(lambda a: a.reshape(shape, order=order), (self,), {})

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None)
        return _call(lambda a: a.transpose(axes), (self,), {})

    def fill(self, value):
        _check(value, "fill")
        a = self._a
        _record(lambda: a.fill(value))

    def __getitem__(self, index):
        idx = _index(index)
        return _call(_take, (self, idx), {})

    def __setitem__(self, index, value):
        if isinstance(value, np.ndarray):
            raise TypeError("Unsupported type <class 'numpy.ndarray'>")
        idx, v = _unwrap(_index(index)), _unwrap(value)
        a = self._a
        _record(lambda: a.__setitem__(idx, v))

    def __setstate__(self, state):
        raise TypeError("the stand-in's arrays do not pickle")


def _method(name, numpy_name=None):
    fn = getattr(np, numpy_name or name)

    def m(self, *args, **kw):
        return _call(fn, (self,) + args, kw)
    m.__name__ = name
    return m


for _n in ("sum", "mean", "max", "min", "argmax", "argmin", "prod", "var", "std", "cumsum", "cumprod", "any",
           "all", "clip", "round", "dot", "nonzero", "sort", "argsort", "take", "diagonal", "repeat", "squeeze",
           "swapaxes", "ravel", "conj", "trace"):
    setattr(ndarray, _n, _method(_n))
ndarray.flatten = lambda self: _call(lambda a: a.flatten(), (self,), {})
ndarray.real = property(lambda self: _call(np.real, (self,), {}))
ndarray.imag = property(lambda self: _call(np.imag, (self,), {}))

_OPS = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide", "floordiv": "floor_divide",
        "mod": "remainder", "pow": "power", "matmul": "matmul", "and": "bitwise_and", "or": "bitwise_or",
        "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
for _k, _u in _OPS.items():
    def _binop(u):
        # CuPy's _should_use_rop: an operand with a higher __array_priority__ (and the
        # reflected method) takes the operator (gpuad.vmap's BatchedArray, 3000 > 100)
        def rop(o):
            return getattr(o, "__array_priority__", 0) > 100 and not isinstance(o, ndarray)
        return (lambda self, o: NotImplemented if rop(o) else getattr(_module, u)(self, o),
                lambda self, o: NotImplemented if rop(o) else getattr(_module, u)(o, self),
                lambda self, o: getattr(_module, u)(self, o, out=self))
    f, r, i = _binop(_u)
    setattr(ndarray, f"__{_k}__", f)
    setattr(ndarray, f"__r{_k}__", r)
    setattr(ndarray, f"__i{_k}__", i)
for _k, _u in {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal", "eq": "equal",
               "ne": "not_equal"}.items():
    setattr(ndarray, f"__{_k}__", (lambda u: lambda self, o: getattr(_module, u)(self, o))(_u))
ndarray.__neg__ = lambda self: _module.negative(self)
ndarray.__pos__ = lambda self: _module.positive(self)
ndarray.__abs__ = lambda self: _module.absolute(self)
ndarray.__invert__ = lambda self: _module.invert(self)
ndarray.__hash__ = None
ndarray.__module__ = "cupy"          # what gpuad (and CuPy users) test: type(x).__module__


def _take(a, i):
    """a[i] as CuPy computes it: an out-of-range integer index wraps around (CuPy checks
    no bounds on the device), where numpy raises."""
    try:
        return a[i]
    except IndexError:
        items = i if isinstance(i, tuple) else (i,)
        if any(x is None or x is Ellipsis for x in items):
            raise
        wrapped = tuple(x % a.shape[k] if isinstance(x, np.ndarray) and x.dtype.kind in "iu" else x
                        for k, x in enumerate(items))
        return a[wrapped if isinstance(i, tuple) else wrapped[0]]


class _EmptyMem:
    ptr, size, buf = 0, 0, np.empty(0, np.uint8)


_EMPTY_MEM = _EmptyMem()


# -- running numpy under CuPy's rules ------------------------------------------------------------

def _check(x, where):
    """Refuse a host array, or any other array-like, where CuPy takes only its own arrays
    and scalars (CuPy's _scalar.pyx: "Unsupported type")."""
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type <class 'numpy.ndarray'> (in {where}: CuPy takes cupy.ndarray and "
                        f"scalars; move it with cupy.asarray)")
    if not isinstance(x, ndarray) and (hasattr(x, "__array_function__") or hasattr(x, "__array_ufunc__")) \
            and not isinstance(x, np.generic):
        raise TypeError(f"Unsupported type {type(x)} (in {where})")


def _index(index):
    """An index for a device array: device arrays, ints, slices, None, Ellipsis; a host array
    or list is copied to the device first, as CuPy does (refused while capturing)."""
    def item(i):
        if isinstance(i, (np.ndarray, list)):
            return _asarray(i)          # CuPy copies it to the device (refused while capturing)
        return i
    return tuple(item(i) for i in index) if isinstance(index, tuple) else item(index)


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(y) for y in x)
    if isinstance(x, slice):
        return slice(_unwrap(x.start), _unwrap(x.stop), _unwrap(x.step))
    return x


def _strict(args, kw, where):
    for a in list(args) + list(kw.values()):
        if isinstance(a, (tuple, list)):
            for b in a:
                _check(b, where)
        else:
            _check(a, where)


def _wrap(r, inputs):
    """numpy's result as device arrays: a view of an input stays a view of it (no copy), a
    new array gets pool memory of its own. Also (wrapped, numpy buffer) for the tape."""
    if isinstance(r, tuple):
        pairs = [_wrap(x, inputs) for x in r]
        return tuple(p[0] for p in pairs), [p[1] for p in pairs]
    if isinstance(r, np.generic):
        r = np.asarray(r)
    if isinstance(r, np.ndarray):
        root = _np_root(r)
        for p in inputs:
            if isinstance(p, ndarray) and p._a.size and _np_root(p._a) is root:
                return ndarray._view(r, p), None
        return ndarray._fresh(r)
    return r, None


def _flat_inputs(args, kw):
    out = []
    for a in list(args) + list(kw.values()):
        if isinstance(a, ndarray):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out.extend(b for b in a if isinstance(b, ndarray))
    return out


def _call(fn, args, kw, where=None):
    """fn (numpy's) on the device arrays in args: strict checks, then numpy, then wrapping;
    recorded while capturing (the result buffer is rewritten at each launch)."""
    _strict(args, kw, where or getattr(fn, "__name__", "a CuPy call"))
    uargs, ukw = _unwrap(args), {k: _unwrap(v) for k, v in kw.items()}
    # CuPy computes on the device and never raises numpy's floating-point warnings (log(0)
    # is -inf silently); while capturing the values are garbage anyway
    with np.errstate(all="ignore"):
        r = fn(*uargs, **ukw)
    wrapped, buf = _wrap(r, _flat_inputs(args, kw))
    if S.capturing is not None:
        bufs = buf if isinstance(buf, list) else [buf]
        for b in bufs:
            _poison(b)

        def again():
            new = fn(*uargs, **ukw)
            for b, n in zip(bufs, new if isinstance(new, tuple) else (new,)):
                if b is not None:
                    np.copyto(b, n, casting="unsafe")
        S.tape.append(again)
    return wrapped


def _function(name, fn):
    params = FUNCTIONS.get(name)
    var_kw = params is None or "kwargs" in params

    def f(*args, **kw):
        if not var_kw:
            bad = set(kw) - set(params)
            if bad:
                raise TypeError(f"cupy.{name}() got unexpected keyword argument(s) {sorted(bad)}")
        return _call(fn, args, kw, f"cupy.{name}")
    f.__name__ = name
    return f


class ufunc:
    """A CuPy ufunc: operands are device arrays or scalars, keywords out/dtype/casting."""

    def __init__(self, name, fn=None):
        self.__name__ = self.name = name
        self._fn = fn or getattr(np, name)
        self.nin, self.nout = UFUNCS[name] if name in UFUNCS else (self._fn.nin, self._fn.nout)

    def __call__(self, *args, **kw):
        bad = set(kw) - _UFUNC_KW
        if bad:
            raise TypeError(f"Wrong arguments {kw} for cupy.{self.name} (CuPy's ufuncs take out=, dtype=, "
                            f"casting=; not {sorted(bad)})")
        if len(args) > self.nin:
            args, kw = args[:self.nin], dict(kw, out=args[self.nin:])
        for a in args:
            if isinstance(a, (list, tuple)):
                raise TypeError(f"Unsupported type {type(a)}")
        out = kw.pop("out", None)
        if isinstance(out, tuple):
            out = out[0] if len(out) == 1 else out
        if out is not None and not isinstance(out, ndarray):
            raise TypeError("Output arguments must be cupy.ndarray")
        if out is None:
            return _call(self._fn, args, kw, f"cupy.{self.name}")
        _strict(args, kw, f"cupy.{self.name}")
        uargs, o = _unwrap(args), out._a
        ukw = {k: _unwrap(v) for k, v in kw.items()}
        _record(lambda: self._fn(*uargs, out=o, **ukw))
        return out

    def _method(self, method):
        fn = getattr(self._fn, method)

        def m(*args, **kw):
            return _call(fn, args, kw, f"cupy.{self.name}.{method}")
        return m

    @property
    def reduce(self):
        return self._method("reduce")

    @property
    def accumulate(self):
        return self._method("accumulate")

    @property
    def outer(self):
        return self._method("outer")

    def at(self, a, index, b=None):
        _strict((a, b), {}, f"cupy.{self.name}.at")
        ua, ui, ub = a._a, _unwrap(_index(index)), _unwrap(b)
        _record(lambda: self._fn.at(ua, ui, *(() if b is None else (ub,))))


# -- module functions with CuPy's own rules ------------------------------------------------------

def _asarray(a, dtype=None, order=None, copy=None, blocking=False):
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a.copy() if copy else a
        return a.astype(dtype)
    _refuse_host("a host-to-device copy (cupy.asarray)")
    host = np.array(a, dtype=dtype)
    return ndarray._fresh(host)[0]


def _array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    if isinstance(obj, ndarray):
        r = obj.astype(dtype or obj.dtype) if copy or dtype is not None else obj
        return r.copy() if copy and r is obj else r
    return _asarray(obj, dtype)


def _asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def _where(condition, x=None, y=None):
    if x is None and y is None:
        _refuse_host("cupy.where with one argument (a host-synchronizing nonzero)")
        return _call(np.nonzero, (condition,), {})
    if not isinstance(condition, ndarray):
        raise AttributeError(f"cupy.where: the condition must be a cupy.ndarray, not {type(condition).__name__} "
                             f"('{type(condition).__name__}' object has no attribute 'astype')")
    return _call(np.where, (condition, x, y), {}, "cupy.where")


def _copyto(dst, src, casting="same_kind", where=True):
    if not isinstance(dst, ndarray):
        raise TypeError("cupy.copyto: the destination must be a cupy.ndarray")
    _strict((src, where), {}, "cupy.copyto")
    d, s, w = dst._a, _unwrap(src), _unwrap(where)
    _record(lambda: np.copyto(d, s, casting=casting, where=w))


def _empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order=order)


def _factory(fill):
    def f(shape, dtype=float, order="C"):
        x = ndarray(shape, dtype, order=order)
        a = x._a
        _record(lambda: a.fill(fill))
        return x
    return f


def _like(fill):
    def f(a, dtype=None, order="K", subok=None, shape=None):
        x = ndarray(a.shape if shape is None else shape, dtype or a.dtype)
        if fill is not None:
            b = x._a
            _record(lambda: b.fill(fill))
        return x
    return f


def _full(shape, fill_value, dtype=None, order="C"):
    _check(fill_value, "cupy.full")
    x = ndarray(shape, dtype if dtype is not None else np.asarray(fill_value).dtype, order=order)
    a, v = x._a, _unwrap(fill_value)
    _record(lambda: a.fill(v) if not isinstance(v, np.ndarray) else np.copyto(a, v))
    return x


def _einsum(*operands, **kwargs):
    bad = set(kwargs) - {"dtype", "optimize", "out", "casting"}
    if bad:
        raise TypeError(f"cupy.einsum: unexpected keywords {sorted(bad)}")
    kwargs.pop("casting", None)
    return _call(np.einsum, operands, kwargs, "cupy.einsum")


def _get_array_module(*args):
    return _module if any(isinstance(a, ndarray) for a in args) else np


def _from_dlpack(x):
    if isinstance(x, ndarray):
        return x
    raise TypeError("the stand-in takes DLPack capsules only from its own arrays")


def _scatter_add(a, slices, value):
    _module.add.at(a, slices, value)


# -- ElementwiseKernel: CUDA C bodies as numpy -----------------------------------------------------

_C_FUNCS = {"tanh": "np.tanh", "exp": "np.exp", "erf": "_erf", "log": "np.log", "sqrt": "np.sqrt",
            "abs": "np.abs", "fabs": "np.abs", "max": "np.maximum", "min": "np.minimum"}


def _c_expr(e):
    """A CUDA C expression as Python on numpy arrays (casts, ternaries, math functions)."""
    e = re.sub(r"\(T\)\s*", "", e)
    m = re.match(r"^(.*?)\?(.*):(.*)$", e)
    if m:
        return f"np.where({_c_expr(m.group(1))}, {_c_expr(m.group(2))}, {_c_expr(m.group(3))})"
    for c, p in _C_FUNCS.items():
        e = re.sub(rf"\b{c}\(", f"{p}(", e)
    return e


def _c_body(body):
    lines = []
    for stmt in body.split(";"):
        stmt = stmt.strip()
        if not stmt:
            continue
        stmt = re.sub(r"^T\s+", "", stmt)
        name, _, expr = stmt.partition("=")
        lines.append(f"{name.strip()} = {_c_expr(expr.strip())}")
    return lines


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", **kw):
        self.ins = [p.split()[-1] for p in in_params.split(",")]
        self.outs = [p.split()[-1] for p in out_params.split(",")]
        src = [f"def kernel({', '.join(self.ins)}):"] + [f"    {ln}" for ln in _c_body(operation)] + \
            [f"    return ({', '.join(self.outs)},)"]
        scope = {"np": np, "_erf": _erf_np}
        exec("\n".join(src), scope)
        self._kernel = scope["kernel"]
        self.name = name

    def __call__(self, *args, **kw):
        ins, outs = args[:len(self.ins)], list(args[len(self.ins):])
        _strict(ins, {}, f"ElementwiseKernel {self.name}")
        arrays = [a for a in ins if isinstance(a, ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        dtype = arrays[0].dtype
        while len(outs) < len(self.outs):
            outs.append(ndarray(shape, dtype))
        uins, uouts = [_unwrap(a) for a in ins], [o._a for o in outs]
        kernel = self._kernel

        def run():
            with np.errstate(over="ignore", invalid="ignore"):
                for o, r in zip(uouts, kernel(*[np.asarray(u, dtype) if np.ndim(u) else dtype.type(u)
                                                for u in uins])):
                    np.copyto(o, r, casting="unsafe")
        _record(run)
        return outs[0] if len(outs) == 1 else tuple(outs)


def _erf_np(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.result_type(x, np.float32))


def _special_erf():
    def erf(x, out=None, dtype=None, casting="same_kind"):
        if not isinstance(x, ndarray):
            _check(x, "cupyx.scipy.special.erf")
        # CuPy's types: e->d, f->f, d->d: float16 comes out float64
        kind = np.float64 if x.dtype in (np.float16, np.float64) else np.float32
        f = lambda a: np.vectorize(math.erf, otypes=[np.float64])(a).astype(kind)  # noqa: E731
        if out is None:
            return _call(f, (x,), {}, "cupyx.scipy.special.erf")
        o, a = out._a, x._a
        _record(lambda: np.copyto(o, f(a), casting=casting))
        return out
    return erf


# -- runtime, devices, NCCL ----------------------------------------------------------------------

runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    memGetInfo=lambda: (_CAPACITY - _pool.used_bytes(), _CAPACITY),
    getDeviceProperties=lambda i: {"name": b"gpuad CuPy stand-in (numpy)", "totalGlobalMem": _CAPACITY,
                                   "multiProcessorCount": 132, "major": 9, "minor": 0,
                                   "sharedMemPerBlockOptin": 232448},
    driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000,
    deviceSynchronize=lambda: _refuse_host("cudaDeviceSynchronize"),
    CUDARuntimeError=RuntimeError,
)


class NcclCommunicator:
    """One rank (the stand-in has one device): collectives copy within that rank."""

    def __init__(self, ndev, commId, rank):
        if ndev != 1:
            raise RuntimeError("the stand-in's NCCL runs one rank")
        self.rank = rank

    def _view(self, ptr, count, dtype):
        mem, off = _block(ptr)
        return mem.buf[off:off + count * np.dtype(dtype).itemsize].view(dtype)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        dt = _NCCL_TYPES[datatype]
        s, r = self._view(sendbuf, count, dt), self._view(recvbuf, count, dt)
        _record(lambda: np.copyto(r, s))

    def bcast(self, buff, count, datatype, root, stream):
        self._view(buff, count, _NCCL_TYPES[datatype])

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        dt = _NCCL_TYPES[datatype]
        s, r = self._view(sendbuf, count, dt), self._view(recvbuf, count, dt)
        _record(lambda: np.copyto(r, s))

    def abort(self):
        pass

    def destroy(self):
        pass


_NCCL_TYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 4: np.int64, 6: np.float16, 7: np.float32, 8: np.float64}


def _nccl_module():
    m = types.ModuleType("cupy.cuda.nccl")
    m.available = True
    m.NcclCommunicator = NcclCommunicator
    m.get_unique_id = lambda: tuple(range(128))
    m.NCCL_INT8, m.NCCL_UINT8, m.NCCL_INT32, m.NCCL_INT64 = 0, 1, 2, 4
    m.NCCL_FLOAT16, m.NCCL_FLOAT32, m.NCCL_FLOAT64 = 6, 7, 8
    m.NCCL_SUM, m.NCCL_PROD, m.NCCL_MAX, m.NCCL_MIN = 0, 1, 2, 3
    return m


# -- assembling the modules ---------------------------------------------------------------------

_module = None


def _build():
    cp = types.ModuleType("cupy")
    cp.__version__ = "14.2.0+standin"
    cp.__file__ = __file__
    cp.ndarray = ndarray
    cp.ufunc = ufunc
    for name in FUNCTIONS:
        f = getattr(np, name, None)
        if f is not None and callable(f) and not isinstance(f, type):
            setattr(cp, name, _function(name, f))
    for name in UFUNCS:
        if hasattr(np, name):
            setattr(cp, name, ufunc(name))
    # dtypes and constants are numpy's, as in CuPy
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                 "uint32", "uint64", "bool_", "complex64", "complex128", "dtype", "inf", "nan", "pi", "e",
                 "newaxis", "iinfo", "finfo", "intp", "generic", "number", "floating", "integer",
                 "complexfloating", "signedinteger", "unsignedinteger"):
        setattr(cp, name, getattr(np, name))
    cp.asarray = cp.asanyarray = _asarray
    cp.array = _array
    cp.asnumpy = _asnumpy
    cp.ascontiguousarray = lambda a, dtype=None: _call(np.ascontiguousarray, (a,), {"dtype": dtype})
    cp.where = _where
    cp.copyto = _copyto
    cp.empty = _empty
    cp.zeros, cp.ones = _factory(0), _factory(1)
    cp.empty_like, cp.zeros_like, cp.ones_like = _like(None), _like(0), _like(1)
    cp.full = _full
    cp.full_like = lambda a, fill_value, dtype=None, **kw: _full(a.shape, fill_value, dtype or a.dtype)
    cp.einsum = _einsum
    cp.get_array_module = _get_array_module
    cp.from_dlpack = _from_dlpack
    cp.is_available = lambda: True
    cp.get_default_memory_pool = get_default_memory_pool
    cp.get_default_pinned_memory_pool = lambda: MemoryPool()
    cp.fuse = lambda *a, **k: (lambda f: f) if not a or not callable(a[0]) else a[0]
    cp.ElementwiseKernel = ElementwiseKernel
    cp.linalg = types.ModuleType("cupy.linalg")
    for name in ("norm", "inv", "solve", "det", "qr", "svd", "cholesky", "eigh", "matrix_power", "slogdet",
                 "pinv", "lstsq", "eigvalsh"):
        setattr(cp.linalg, name, _function(name, getattr(np.linalg, name)))
    cp.random = _random_module()
    cuda = types.ModuleType("cupy.cuda")
    cuda.Stream, cuda.Event, cuda.Graph = Stream, Event, Graph
    cuda.Device = _Device
    cuda.get_current_stream = get_current_stream
    cuda.runtime = runtime
    cuda.MemoryHook, cuda.MemoryPool, cuda.MemoryPointer = MemoryHook, MemoryPool, MemoryPointer
    cuda.using_allocator = using_allocator
    cuda.set_allocator = lambda alloc=None: None
    cuda.get_allocator = lambda: _malloc
    cuda.is_available = lambda: True
    cuda.get_device_id = lambda: 0
    cuda.get_cublas_handle = lambda: 1
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1, Device=_Device)
    cuda.memory = types.ModuleType("cupy.cuda.memory")
    cuda.memory.OutOfMemoryError = OutOfMemoryError
    cuda.memory.MemoryPointer = MemoryPointer
    cuda.profiler = types.SimpleNamespace(start=lambda: None, stop=lambda: None)
    cuda.nvtx = types.SimpleNamespace(RangePush=lambda *a: None, RangePop=lambda: None)
    cuda.nccl = _nccl_module()
    cp.cuda = cuda
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    for i, n in enumerate(("COMPUTE_TYPE_TBD", "COMPUTE_TYPE_DEFAULT", "COMPUTE_TYPE_PEDANTIC", "COMPUTE_TYPE_FP16",
                           "COMPUTE_TYPE_FP32", "COMPUTE_TYPE_FP64", "COMPUTE_TYPE_BF16", "COMPUTE_TYPE_TF32")):
        setattr(linalg, n, i)
        setattr(core, n, i)

    def set_compute_type(dtype, compute_type):       # CuPy 14's signature, per dtype
        S.compute_type[np.dtype(dtype)] = compute_type

    def get_compute_type(dtype):
        return S.compute_type.get(np.dtype(dtype), 1)      # COMPUTE_TYPE_DEFAULT
    linalg.set_compute_type = core.set_compute_type = set_compute_type
    linalg.get_compute_type = core.get_compute_type = get_compute_type
    core._routines_linalg = linalg
    cp._core = core
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = _scatter_add
    cupyx.scipy = types.ModuleType("cupyx.scipy")
    cupyx.scipy.special = types.ModuleType("cupyx.scipy.special")
    cupyx.scipy.special.erf = _special_erf()
    cupyx.__file__ = __file__
    return cp, cupyx


def _random_module():
    m = types.ModuleType("cupy.random")
    rng = np.random.default_rng(0)

    def draw(kind):
        def f(*args, size=None, dtype=None, **kw):
            a = getattr(rng, kind)(*args, size=size, **kw) if kind != "standard_normal" else \
                rng.standard_normal(size)
            return ndarray._fresh(np.asarray(a, dtype=dtype or np.asarray(a).dtype))[0]
        return f
    for k in ("standard_normal", "random", "uniform", "normal", "integers"):
        setattr(m, k, draw(k))
    m.seed = lambda s=None: None
    m.rand = lambda *shape: draw("random")(size=shape)
    m.randn = lambda *shape: draw("standard_normal")(size=shape)
    return m


def install():
    """Make `import cupy` (and cupyx, cupy.cuda) give the stand-in, in this process."""
    global _module
    if _module is not None:
        return _module
    cp, cupyx = _build()
    _module = cp
    sys.modules.update({"cupy": cp, "cupy.cuda": cp.cuda, "cupy.cuda.nccl": cp.cuda.nccl,
                        "cupy.cuda.memory": cp.cuda.memory, "cupy.linalg": cp.linalg, "cupy.random": cp.random,
                        "cupy._core": cp._core, "cupy._core._routines_linalg": cp._core._routines_linalg,
                        "cupyx": cupyx, "cupyx.scipy": cupyx.scipy, "cupyx.scipy.special": cupyx.scipy.special})
    return cp


def capturing():
    return S.capturing is not None
