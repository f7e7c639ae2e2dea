"""pare: make TorchScript models smaller and faster, and serve them cheaply.

The heavy lifting is the C++ library; this package binds it for Python and
speaks torch's own types: passes take and return ``torch.jit.ScriptModule``
objects and ``torch.Tensor`` values. Durations are float seconds.

    import torch, pare
    scripted = torch.jit.script(model)
    result = pare.Pipeline([pare.L1Prune(0.5, scope="global"),
                            pare.ExportTorchScript("m.pt")]).run(scripted)
    print(result.report)          # result.module, result.masks; or: out, report = ...

Every exception pare raises is a ``pare.Error``: ``pare.InvalidArgument``
(also a ``ValueError``) for bad arguments, ``pare.RuntimeFailure`` (also a
``RuntimeError``) for failures, and its subclasses ``pare.Overloaded`` and
``pare.Timeout`` for a runner's refusals.
"""

from typing import Iterable, List

import torch  # noqa: F401  (registers torch's pybind11 casters before the extension loads)

from ._pare import (  # noqa: F401
    Error,
    ExportTorchScript,
    InvalidArgument,
    L1Prune,
    LayerReport,
    Pass,
    PassReport,
    Report,
    Result,
    RuntimeFailure,
    prune_count,
    read_embedded_report,
    scope_names,
)
from ._pare import _run_pipeline
from ._pare import (  # noqa: F401
    QuantizeInt8,
    QuantizeInt8Dynamic,
    available_quantized_engines,
    current_quantized_engine,
    load_calibration_file,
    observer_names,
    quantization_info,
    set_quantized_engine,
)
from ._pare import _engine_mismatch_warning
from ._pare import CacheStats, InferenceCache  # noqa: F401
from ._pare import model_fingerprint  # noqa: F401
from ._pare import ConvertPrecision  # noqa: F401
try:
    from ._pare import RedisTier, RedisTierStats  # noqa: F401  (built with PARE_WITH_REDIS)
    _has_redis = True
except ImportError:
    _has_redis = False
from ._pare import Runner, RunnerStats, inspect_model  # noqa: F401
from ._pare import inspect_report  # noqa: F401
from ._pare import Overloaded, Timeout  # noqa: F401
from ._pare import Distill, apply_masks, distillation_loss  # noqa: F401
from ._pare import DistillMatch, match_loss, submodule_outputs  # noqa: F401
from ._pare import (  # noqa: F401
    PooledTensor,
    PoolStats,
    PoolAllocatorGuard,
    TensorPool,
    install_pool_allocator,
    unpooled_cpu_allocations,
)

from ._pare import __version__  # noqa: F401  (pare/version.hpp, from the CMake project version)
from ._pare import BenchRow, bench_html, bench_json, bench_table, benchmark_models  # noqa: F401
from ._pare import ChannelGroupReport, ChannelPruneStats, PruneChannels, RecalibrateBatchNorm, count_macs, prune_channels  # noqa: F401
from ._pare import CompressTo  # noqa: F401


class Pipeline:
    """An ordered list of passes. ``run`` never modifies the module it is given."""

    def __init__(self, passes: Iterable[Pass] = ()) -> None:
        """A pipeline of ``passes`` (pare passes, or Python subclasses of ``pare.Pass``), run in order."""
        self.passes: List[Pass] = []
        for p in passes:
            self.add(p)

    def add(self, p: Pass) -> "Pipeline":
        """Appends a pass; returns the pipeline, so calls chain."""
        if not isinstance(p, Pass):
            raise InvalidArgument(f"Pipeline.add: expected a pare pass such as pare.L1Prune(...), got {type(p).__name__}")
        nearest_builtin = next(c for c in type(p).__mro__ if c.__module__ == Pass.__module__)
        if nearest_builtin is Pass and not callable(getattr(p, "run", None)):
            raise InvalidArgument(f"Pipeline.add: {type(p).__name__} subclasses pare.Pass but defines no "
                                  "run(self, state, entry) method")
        self.passes.append(p)
        return self

    def run(self, module: torch.jit.ScriptModule) -> Result:
        """Runs every pass on a copy of ``module``: a ``pare.Result`` (module, report, masks) that also
        unpacks as ``out, report = pipeline.run(module)``."""
        return _run_pipeline(self.passes, module)

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(p.name for p in self.passes) + "])"


def load_quantized(path: str) -> torch.jit.ScriptModule:
    """``torch.jit.load`` for pare int8 exports, warning (``RuntimeWarning``) when
    the running quantized engine differs from the one the file was made for."""
    import warnings

    message = _engine_mismatch_warning(path)
    if message:
        warnings.warn("pare: " + message, RuntimeWarning, stacklevel=2)
    return torch.jit.load(path)


__all__ = [
    "BenchRow", "CacheStats", "ChannelGroupReport", "ChannelPruneStats", "CompressTo", "ConvertPrecision", "Distill", "Error",
    "ExportTorchScript", "InferenceCache", "InvalidArgument", "L1Prune", "LayerReport", "Overloaded", "Pass",
    "PassReport", "Pipeline", "PoolAllocatorGuard", "PoolStats", "PooledTensor", "PruneChannels", "QuantizeInt8",
    "QuantizeInt8Dynamic", "RecalibrateBatchNorm", "Report", "Result", "Runner", "RunnerStats", "RuntimeFailure",
    "TensorPool", "Timeout", "__version__", "apply_masks", "available_quantized_engines", "bench_html", "bench_json",
    "bench_table", "benchmark_models", "count_macs", "current_quantized_engine", "distillation_loss",
    "inspect_model", "inspect_report", "install_pool_allocator", "load_calibration_file", "load_quantized",
    "model_fingerprint", "observer_names", "prune_channels", "prune_count", "quantization_info",
    "read_embedded_report", "scope_names", "set_quantized_engine", "unpooled_cpu_allocations",
]
__all__ += ["DistillMatch", "match_loss", "submodule_outputs"]
if _has_redis:
    __all__ += ["RedisTier", "RedisTierStats"]
