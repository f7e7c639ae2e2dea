# pare_unity_build(TARGET): with PARE_UNITY_BUILD, the target's sources compile
# as PARE_UNITY_BATCHES translation units (default 2, one per core of a
# two-core machine): each batch instantiates and optimises LibTorch's inline
# code once instead of once per source. The library, clean, two jobs, no
# ccache: 86 s wall / 133 s CPU in 2 batches, 114 s / 184 s in batches of 8,
# 345 s / 648 s one source at a time; a batch of 19 sources peaks at ~2.1 GB.
# Names at namespace scope (anonymous namespaces included) must therefore
# differ across a target's sources.
function(pare_unity_build target)
  get_target_property(sources ${target} SOURCES)
  list(FILTER sources INCLUDE REGEX "\\.(cpp|cxx|cc)$")
  list(LENGTH sources count)
  math(EXPR size "(${count} + ${PARE_UNITY_BATCHES} - 1) / ${PARE_UNITY_BATCHES}")
  if(size LESS 4)  # a few sources: one batch (each batch costs ~10 s of LibTorch's inline code)
    set(size 4)
  endif()
  set_target_properties(${target} PROPERTIES UNITY_BUILD ${PARE_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE ${size})
endfunction()

# pare_warnings(TARGET): -Wall -Wextra, as errors with PARE_WARNINGS_AS_ERRORS —
# but not under sanitizers: their instrumentation makes GCC report false
# -Wmaybe-uninitialized in the standard library (std::regex, via Catch).
function(pare_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(PARE_WARNINGS_AS_ERRORS AND NOT PARE_SANITIZE)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# pare_target_options(TARGET): the compile settings every target pare builds
# shares — its warnings, and the LibTorch precompiled header of the lowest
# subsystem, pare_core (build time: each LibTorch source costs ~30 s to parse
# without it).
function(pare_target_options target)
  pare_unity_build(${target})
  pare_warnings(${target})
  if(NOT PARE_PRECOMPILED_HEADERS)
    return()
  endif()
  # GCC ignores a precompiled header built with other macros: the cache's
  # sources get hiredis's pkg-config flags (-D_FILE_OFFSET_BITS=64), so the
  # header and every target that reuses it are built with them too, or every
  # one of their sources parses LibTorch again.
  if(TARGET PkgConfig::HIREDIS)
    target_compile_options(${target} PRIVATE $<TARGET_PROPERTY:PkgConfig::HIREDIS,INTERFACE_COMPILE_OPTIONS>)
  endif()
  if(target STREQUAL "pare_core")
    target_precompile_headers(pare_core PRIVATE ${PROJECT_SOURCE_DIR}/cmake/pare_pch.hpp)
    return()
  endif()
  # A precompiled header is only valid for code compiled the same way: the
  # library is position-independent (-fPIC), so its users are as well.
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    target_compile_options(${target} PRIVATE -fPIC)
  endif()
  target_precompile_headers(${target} REUSE_FROM pare_core)
endfunction()
