// The installed `pare` binary: see pare::cli_main.
#include <iostream>

#include "pare/tools/cli.hpp"

int main(int argc, char** argv) {
  return pare::cli_main(std::vector<std::string>(argv, argv + argc), std::cout, std::cerr);
}
