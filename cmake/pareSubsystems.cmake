# pare_add_subsystem(NAME SOURCES...): the object library pare_NAME of the
# subsystem in src/NAME/ and include/pare/NAME/. The `pare` library is made of
# the objects of every subsystem (PARE_SUBSYSTEMS, in the order of the layers).
# Each subsystem compiles as one unity batch: one instantiation of LibTorch's
# inline code per subsystem instead of per source (docs/design.md).
set(PARE_SUBSYSTEMS "" CACHE INTERNAL "pare's subsystems, lowest layer first")

# pare_library_usage(TARGET SCOPE): include paths and dependencies that the
# library and each of its subsystems share; SCOPE is PUBLIC for the library.
function(pare_library_usage target scope)
  target_include_directories(${target} ${scope}
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(${target} ${scope} torch)
  target_compile_features(${target} ${scope} cxx_std_17)
  if(PARE_WITH_REDIS)
    target_compile_definitions(${target} ${scope} PARE_WITH_REDIS=1)
  endif()
endfunction()

function(pare_add_subsystem name)
  set(target pare_${name})
  add_library(${target} OBJECT ${ARGN})
  pare_library_usage(${target} PUBLIC)
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${target} PRIVATE nlohmann_json::nlohmann_json Eigen3::Eigen PkgConfig::XXHASH)
  pare_target_options(${target})
  set_target_properties(${target} PROPERTIES UNITY_BUILD_BATCH_SIZE 0)  # the whole subsystem in one batch
  set(PARE_SUBSYSTEMS ${PARE_SUBSYSTEMS} ${name} CACHE INTERNAL "")
endfunction()
