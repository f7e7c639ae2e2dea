# Dependencies, all from Debian packages. Shared by the build and, through
# pareConfig.cmake, by projects that consume an installed pare.
find_package(Torch REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
