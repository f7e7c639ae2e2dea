# pare_unity_build(TARGET): with PARE_UNITY_BUILD, the target's sources compile
# in batches of 8 per translation unit: each batch instantiates LibTorch's
# inline code once instead of once per source (library: 190 s of CPU instead of
# 648 s). Names in anonymous namespaces must therefore differ across sources.
function(pare_unity_build target)
  set_target_properties(${target} PROPERTIES UNITY_BUILD ${PARE_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 8)
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
# shares — its warnings, and the LibTorch precompiled header of the `pare`
# library (build time: each LibTorch source costs ~30 s to parse without it).
function(pare_target_options target)
  pare_unity_build(${target})
  pare_warnings(${target})
  if(PARE_PRECOMPILED_HEADERS AND NOT target STREQUAL "pare")
    # A precompiled header is only valid for code compiled the same way: the
    # library is position-independent (-fPIC), so its users are as well.
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_compile_options(${target} PRIVATE -fPIC)
    endif()
    target_precompile_headers(${target} REUSE_FROM pare)
    # GCC ignores a precompiled header built with other macros: the library's is
    # built with hiredis's pkg-config flags (-D_FILE_OFFSET_BITS=64), so its
    # users get them too, or every one of their sources parses LibTorch again.
    if(TARGET PkgConfig::HIREDIS)
      target_compile_options(${target} PRIVATE $<TARGET_PROPERTY:PkgConfig::HIREDIS,INTERFACE_COMPILE_OPTIONS>)
    endif()
  endif()
endfunction()
