# Builds examples/consumer with pare as a subproject — MODE is subdirectory
# (add_subdirectory of SOURCE_DIR) or fetchcontent (FetchContent of the
# committed HEAD of SOURCE_DIR's git repository) — and runs it. Run by ctest as
# install.subdirectory and install.fetchcontent.
set(consumer_build ${BUILD_DIR}/consumer-${MODE})
file(REMOVE_RECURSE ${consumer_build})

include(${CMAKE_CURRENT_LIST_DIR}/run_checked.cmake)

# Unoptimised (build type None): the check is that the parent project builds and links pare.
set(args -DPARE_CONSUME=${MODE} -DCMAKE_BUILD_TYPE=None)
if(LAUNCHER)
  list(APPEND args "-DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}")
endif()
if(MODE STREQUAL "subdirectory")
  list(APPEND args -DPARE_SOURCE_DIR=${SOURCE_DIR})
else()
  execute_process(COMMAND git -C ${SOURCE_DIR} rev-parse HEAD OUTPUT_VARIABLE head
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${SOURCE_DIR} is not a git checkout: FetchContent needs a repository")
  endif()
  list(APPEND args -DPARE_GIT_REPOSITORY=${SOURCE_DIR} -DPARE_GIT_TAG=${head})
endif()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/consumer -B ${consumer_build} -G ${GENERATOR} ${args})
run(${CMAKE_COMMAND} --build ${consumer_build} --target pare_consumer)
run(${consumer_build}/pare_consumer)
