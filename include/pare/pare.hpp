#pragma once
// Everything pare offers, in one include.

#include "pare/distill.hpp"
#include "pare/cache.hpp"
#include "pare/error.hpp"
#include "pare/export.hpp"
#include "pare/pipeline.hpp"
#include "pare/pool.hpp"
#include "pare/precision.hpp"
#include "pare/prune.hpp"
#include "pare/prune_channels.hpp"
#include "pare/quantize.hpp"
#include "pare/report.hpp"
#include "pare/runner.hpp"
#include "pare/version.hpp"
#include "pare/trace.hpp"
#include "pare/bench.hpp"
#include "pare/cli.hpp"
#include "pare/fingerprint.hpp"
#ifdef PARE_WITH_REDIS
#include "pare/redis_tier.hpp"
#endif
