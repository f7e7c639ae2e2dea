#pragma once
// Everything pare offers, in one include.

#include "pare/distill.hpp"
#include "pare/error.hpp"
#include "pare/export.hpp"
#include "pare/pipeline.hpp"
#include "pare/prune.hpp"
#include "pare/report.hpp"
