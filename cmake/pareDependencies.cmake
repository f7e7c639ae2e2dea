# Dependencies, all from Debian packages. Shared by the build and, through
# pareConfig.cmake, by projects that consume an installed pare.
find_package(Torch REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)  # header-only, used by src/cli.cpp only (not needed by consumers)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)

# The inference cache: XXH3 from libxxhash-dev, the Redis tier from libhiredis-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
if(PARE_WITH_REDIS)
  pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
endif()
