# Minimal package config for the header-only RapidJSON archive (it ships include/ only).
get_filename_component(RAPIDJSON_INCLUDE_DIRS "${CMAKE_CURRENT_LIST_DIR}/include" ABSOLUTE)
set(RapidJSON_INCLUDE_DIRS "${RAPIDJSON_INCLUDE_DIRS}")
set(RapidJSON_FOUND TRUE)
