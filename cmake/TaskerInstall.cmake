# Install rules: the libraries, the public header, a pkg-config file and a
# CMake package, so a C build outside this tree can consume tasker with
#   cc app.c $(pkg-config --cflags --libs tasker)
# or
#   find_package(tasker 0.1 REQUIRED)  +  target_link_libraries(app PRIVATE tasker::tasker)
#
# Both files are relocatable: `cmake --install <build> --prefix P` may choose a
# prefix other than the one configured, so neither file embeds an absolute
# install path.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TASKER_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/tasker"
    CACHE STRING "Where the tasker CMake package files are installed (relative to the prefix)")
set(TASKER_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig"
    CACHE STRING "Where tasker.pc is installed (relative to the prefix)")

# Exported as tasker::tasker (libtasker.so) and tasker::tasker_static
# (libtasker.a: OUTPUT_NAME in the root keeps its file name).
install(TARGETS tasker tasker_static
  EXPORT taskerTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)

install(FILES ${PROJECT_SOURCE_DIR}/include/tasker.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)

# The exported targets name the PkgConfig::<PREFIX> imported targets (jansson,
# uuid, libpq) and Threads::Threads: tasker_static links them PUBLIC, the
# shared library only privately.  taskerConfig.cmake recreates those imported
# targets before it loads taskerTargets.cmake.
install(EXPORT taskerTargets
  NAMESPACE tasker::
  FILE taskerTargets.cmake
  DESTINATION ${TASKER_INSTALL_CMAKEDIR} COMPONENT Development)

# The ABI is stable within a major version (SOVERSION is the major number),
# so any 0.x request is satisfied by a 0.y library with y >= x.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/cmake/taskerConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMajorVersion)

# The dependencies both files must name are read from tasker_static's link
# interface (the PkgConfig::<PREFIX> targets the root made with
# pkg_check_modules), so adding a dependency there is enough.  The files are
# written once the directory is fully processed, after every
# target_link_libraries() call in it.
function(_tasker_write_package_files)
  get_target_property(_links tasker_static INTERFACE_LINK_LIBRARIES)
  set(TASKER_PKGCONFIG_DEPS "")      # PREFIX=module pairs for taskerConfig.cmake
  set(TASKER_PC_REQUIRES_PRIVATE "") # modules for tasker.pc
  set(TASKER_PC_LIBS_PRIVATE "")
  foreach(_item IN LISTS _links)
    if(_item MATCHES "PkgConfig::([A-Za-z0-9_]+)")
      set(_prefix "${CMAKE_MATCH_1}")
      if(DEFINED ${_prefix}_MODULE_NAME AND NOT "${${_prefix}_MODULE_NAME}" STREQUAL "")
        set(_module "${${_prefix}_MODULE_NAME}")
      else()
        string(TOLOWER "${_prefix}" _module)
      endif()
      list(APPEND TASKER_PKGCONFIG_DEPS "${_prefix}=${_module}")
      list(APPEND TASKER_PC_REQUIRES_PRIVATE "${_module}")
    elseif(_item MATCHES "Threads::Threads")
      list(APPEND TASKER_PC_LIBS_PRIVATE "-pthread")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES TASKER_PKGCONFIG_DEPS)
  list(REMOVE_DUPLICATES TASKER_PC_REQUIRES_PRIVATE)
  list(REMOVE_DUPLICATES TASKER_PC_LIBS_PRIVATE)
  list(JOIN TASKER_PC_REQUIRES_PRIVATE " " TASKER_PC_REQUIRES_PRIVATE)
  list(JOIN TASKER_PC_LIBS_PRIVATE " " TASKER_PC_LIBS_PRIVATE)

  configure_package_config_file(
    ${_TASKER_INSTALL_MODULE_DIR}/taskerConfig.cmake.in
    ${PROJECT_BINARY_DIR}/cmake/taskerConfig.cmake
    INSTALL_DESTINATION ${TASKER_INSTALL_CMAKEDIR})

  # pkg-config: ${pcfiledir} makes the file relocatable.  The relative path
  # from the .pc directory back to the prefix is worked out here, so a custom
  # CMAKE_INSTALL_LIBDIR (lib64, lib/x86_64-linux-gnu) still resolves.
  if(IS_ABSOLUTE "${TASKER_INSTALL_PKGCONFIGDIR}")
    set(TASKER_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  else()
    file(RELATIVE_PATH _up "/__prefix__/${TASKER_INSTALL_PKGCONFIGDIR}" "/__prefix__")
    string(REGEX REPLACE "/$" "" _up "${_up}")
    set(TASKER_PC_PREFIX "\${pcfiledir}/${_up}")
  endif()
  foreach(_dir LIBDIR INCLUDEDIR)
    if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
      set(TASKER_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
    else()
      set(TASKER_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
    endif()
  endforeach()
  configure_file(${_TASKER_INSTALL_MODULE_DIR}/tasker.pc.in ${PROJECT_BINARY_DIR}/cmake/tasker.pc @ONLY)
endfunction()

set(_TASKER_INSTALL_MODULE_DIR "${CMAKE_CURRENT_LIST_DIR}")
if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.19)
  cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL _tasker_write_package_files)
else()
  _tasker_write_package_files()
endif()

install(FILES
  ${PROJECT_BINARY_DIR}/cmake/taskerConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/taskerConfigVersion.cmake
  DESTINATION ${TASKER_INSTALL_CMAKEDIR} COMPONENT Development)
install(FILES ${PROJECT_BINARY_DIR}/cmake/tasker.pc
  DESTINATION ${TASKER_INSTALL_PKGCONFIGDIR} COMPONENT Development)
