# dali_backend's extern/Catch2 submodule is empty in a source archive; only its unit tests use
# it, and they are not built. An interface target satisfies their link line.
add_library(Catch2 INTERFACE)
add_library(Catch2::Catch2 ALIAS Catch2)
