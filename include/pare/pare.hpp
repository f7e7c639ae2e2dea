#pragma once
// Everything the pare library offers, in one include, subsystem by subsystem
// (docs/design.md draws their layers). The tools (CLI, benchmark harness) are
// not part of it: they live in the pare_tools target, include pare/tools/*.hpp.

#include "pare/version.hpp"

#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"
#include "pare/core/pipeline.hpp"
#include "pare/core/report.hpp"

#include "pare/prune/prune.hpp"
#include "pare/prune/prune_channels.hpp"
#include "pare/prune/recalibrate_batchnorm.hpp"
#include "pare/quantize/quantize.hpp"
#include "pare/convert/export.hpp"
#include "pare/convert/precision.hpp"
#include "pare/convert/trace.hpp"
#include "pare/distill/distill.hpp"

#include "pare/cache/cache.hpp"
#include "pare/cache/fingerprint.hpp"
#ifdef PARE_WITH_REDIS
#include "pare/cache/redis_tier.hpp"
#endif
#include "pare/pool/pool.hpp"
#include "pare/serve/runner.hpp"

#include "pare/compress/compress_to.hpp"
