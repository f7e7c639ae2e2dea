# Builds examples/consumer with pare as a subproject — MODE is subdirectory
# (add_subdirectory of a vendored copy of SOURCE_DIR) or fetchcontent
# (FetchContent of the committed HEAD of SOURCE_DIR's git repository) — and
# runs it. Run by ctest as install.subdirectory and install.fetchcontent.
#
# Both modes put pare's sources and build tree at the same paths (one mode at a
# time: ctest's lock), so with a LAUNCHER (ccache) the second compiles nothing:
# every object is the first one's, with the same paths and flags.
set(consumer_build ${BUILD_DIR}/consumer-subproject)
set(pare_source ${consumer_build}/pare-src)  # FetchContent's default place under FETCHCONTENT_BASE_DIR
file(REMOVE_RECURSE ${consumer_build} ${BUILD_DIR}/consumer-subdirectory ${BUILD_DIR}/consumer-fetchcontent)

include(${CMAKE_CURRENT_LIST_DIR}/run_checked.cmake)

function(git_output out)
  execute_process(COMMAND git -C ${SOURCE_DIR} ${ARGN} OUTPUT_VARIABLE text OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${SOURCE_DIR} is not a git checkout: the subproject checks copy or fetch its files with git")
  endif()
  set(${out} ${text} PARENT_SCOPE)
endfunction()

# Unoptimised (build type None): the check is that the parent project builds and links pare.
set(args -DPARE_CONSUME=${MODE} -DCMAKE_BUILD_TYPE=None)
if(LAUNCHER)
  list(APPEND args "-DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}")
endif()
if(MODE STREQUAL "subdirectory")
  # What a team vendoring pare copies: the files git tracks, and new ones it does not ignore.
  git_output(files ls-files --cached --others --exclude-standard)
  string(REPLACE "\n" ";" files "${files}")
  foreach(file IN LISTS files)
    if(EXISTS ${SOURCE_DIR}/${file})
      get_filename_component(dir ${pare_source}/${file} DIRECTORY)
      file(COPY ${SOURCE_DIR}/${file} DESTINATION ${dir})
    endif()
  endforeach()
  list(APPEND args -DPARE_SOURCE_DIR=${pare_source})
else()
  git_output(head rev-parse HEAD)
  list(APPEND args -DPARE_GIT_REPOSITORY=${SOURCE_DIR} -DPARE_GIT_TAG=${head} -DFETCHCONTENT_BASE_DIR=${consumer_build})
endif()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/consumer -B ${consumer_build} -G ${GENERATOR} ${args})
run(${CMAKE_COMMAND} --build ${consumer_build} --target pare_consumer)
run(${consumer_build}/pare_consumer)
