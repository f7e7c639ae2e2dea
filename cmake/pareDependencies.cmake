# Dependencies, all from Debian packages. Shared by the build and, through
# pareConfig.cmake, by projects that consume an installed pare.
find_package(Torch REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)  # header-only, used by src/tools/cli.cpp only (not needed by consumers)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)

# The inference cache: XXH3 from libxxhash-dev, the Redis tier from libhiredis-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
if(PARE_WITH_REDIS)
  pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
endif()

# As a subproject (add_subdirectory, FetchContent) the parent links pare::pare,
# and through it these imported targets, which find_package made visible in
# pare's directory only: make them global.
if(NOT CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
  if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.21)
    get_directory_property(pare_imported_targets IMPORTED_TARGETS)
  else()
    set(pare_imported_targets torch torch_library torch_cpu torch_cpu_library c10 nlohmann_json::nlohmann_json
        Eigen3::Eigen CLI11::CLI11 PkgConfig::XXHASH PkgConfig::HIREDIS)
  endif()
  foreach(target IN LISTS pare_imported_targets)
    if(TARGET ${target})
      get_target_property(global ${target} IMPORTED_GLOBAL)
      if(NOT global)
        set_target_properties(${target} PROPERTIES IMPORTED_GLOBAL TRUE)
      endif()
    endif()
  endforeach()
endif()
