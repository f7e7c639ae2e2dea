# Installs pare from BUILD_DIR into a scratch prefix, builds examples/consumer
# against it with find_package(pare CONFIG REQUIRED), runs it, and imports the
# installed Python package. Run by ctest as install.consumer.
set(prefix ${BUILD_DIR}/consumer-test/prefix)
set(consumer_build ${BUILD_DIR}/consumer-test/build)
file(REMOVE_RECURSE ${BUILD_DIR}/consumer-test)

include(${CMAKE_CURRENT_LIST_DIR}/run_checked.cmake)

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/consumer -B ${consumer_build} -G ${GENERATOR}
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${consumer_build})
run(${consumer_build}/pare_consumer)

if(PYTHON AND PYTHON_PACKAGE_DIR)
  get_filename_component(site_dir ${prefix}/${PYTHON_PACKAGE_DIR} DIRECTORY)
  run(${CMAKE_COMMAND} -E env PYTHONPATH=${site_dir} ${PYTHON} -c
      "import pare, torch; m = torch.jit.script(torch.nn.Linear(8, 4)); out, r = pare.Pipeline([pare.L1Prune(amount=0.5)]).run(m); assert (out.weight == 0).sum() == 16; print('installed python package:', pare.__file__)")
endif()
