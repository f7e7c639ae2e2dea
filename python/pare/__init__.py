"""pare: make TorchScript models smaller and faster, and serve them cheaply.

The heavy lifting is the C++ library; this package binds it for Python and
speaks torch's own types: passes take and return ``torch.jit.ScriptModule``
objects and ``torch.Tensor`` values.

    import torch, pare
    scripted = torch.jit.script(model)
    out, report = pare.Pipeline([pare.L1Prune(amount=0.5, scope="global"),
                                 pare.ExportTorchScript("m.pt")]).run(scripted)
"""

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
    from ._pare import RedisTier  # noqa: F401  (built with PARE_WITH_REDIS)
except ImportError:
    pass
from ._pare import Runner, RunnerStats, inspect_model  # noqa: F401
from ._pare import inspect_report  # noqa: F401
from ._pare import Overloaded, Timeout  # noqa: F401
from ._pare import Distill, apply_masks, distillation_loss  # noqa: F401
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


class Pipeline:
    """An ordered list of passes. ``run`` never modifies the module it is given.

    ``run(scripted)`` returns ``(module, report)``; the pruning masks of the
    last run are kept in ``pipeline.masks`` (parameter name -> bool tensor).
    """

    def __init__(self, passes=()):
        self.passes = []
        self.masks = {}
        for p in passes:
            self.add(p)

    def add(self, p):
        if not isinstance(p, Pass):
            raise InvalidArgument(f"Pipeline.add: expected a pare pass such as pare.L1Prune(...), got {type(p).__name__}")
        self.passes.append(p)
        return self

    def run(self, module):
        out, report, self.masks = _run_pipeline(self.passes, module)
        return out, report

    def __repr__(self):
        return "Pipeline([" + ", ".join(p.name for p in self.passes) + "])"


def load_quantized(path):
    """``torch.jit.load`` for pare int8 exports, warning (``RuntimeWarning``) when
    the running quantized engine differs from the one the file was made for."""
    import warnings

    message = _engine_mismatch_warning(path)
    if message:
        warnings.warn("pare: " + message, RuntimeWarning, stacklevel=2)
    return torch.jit.load(path)
