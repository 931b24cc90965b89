# Install layout and the Debian package (CPack DEB). See docs/PACKAGING.md.
include(GNUInstallDirs)

install(FILES README.md docs/ARCHITECTURE.md docs/PROTOCOL.md docs/SECURITY.md docs/PACKAGING.md
              docs/CONTAINERS.md docs/CONFIGURATION.md docs/OPERATIONS.md docs/WEB.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES examples/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} RENAME README.examples.md)
install(FILES deploy/systemd/streamgate-relay.env deploy/systemd/streamgate-device-proxy.env
              deploy/config/relay.toml deploy/config/device-proxy.toml deploy/config/service-proxy.toml
              deploy/config/web.toml
              deploy/grafana/streamgate-dashboard.json
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# Units and /etc files follow the prefix: with --prefix /usr (the package) they go to
# /lib/systemd/system and /etc/streamgate as Debian expects, with any other prefix below it,
# so `cmake --install build --prefix /tmp/x` never writes outside /tmp/x. Decided at install
# time because CPack installs with its own prefix (/usr), not the build tree's.
install(CODE "set(sg_deploy_dir \"${CMAKE_CURRENT_SOURCE_DIR}/deploy\")")
install(CODE [[
  if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
    set(sg_unit_dir "/lib/systemd/system")
    set(sg_etc_dir "/etc/streamgate")
    set(sg_sysusers_dir "/usr/lib/sysusers.d")
  else()
    set(sg_unit_dir "${CMAKE_INSTALL_PREFIX}/lib/systemd/system")
    set(sg_etc_dir "${CMAKE_INSTALL_PREFIX}/etc/streamgate")
    set(sg_sysusers_dir "${CMAKE_INSTALL_PREFIX}/lib/sysusers.d")
  endif()
  file(INSTALL "${sg_deploy_dir}/systemd/streamgate-relay.service"
               "${sg_deploy_dir}/systemd/streamgate-device-proxy.service"
               "${sg_deploy_dir}/systemd/streamgate-device-proxy@.service"
       DESTINATION "${sg_unit_dir}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  file(INSTALL "${sg_deploy_dir}/systemd/streamgate.sysusers.conf"
       DESTINATION "${sg_sysusers_dir}" RENAME streamgate.conf
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  # The device proxy's file holds a connection string (a secret): systemd reads it as root.
  file(INSTALL "${sg_deploy_dir}/systemd/streamgate-relay.env" DESTINATION "${sg_etc_dir}" RENAME relay.env
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  file(INSTALL "${sg_deploy_dir}/systemd/streamgate-device-proxy.env" DESTINATION "${sg_etc_dir}"
       RENAME device-proxy.env FILE_PERMISSIONS OWNER_READ OWNER_WRITE)
]])

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME streamgate)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "Streamgate")
set(CPACK_PACKAGE_CONTACT "Streamgate maintainers <streamgate@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "self-hosted secure tunnels to devices (IoT Hub device streams)")
set(CPACK_PACKAGE_DESCRIPTION
    "Streamgate re-creates IoT Hub device streams: a relay (registry, control connections and\n"
    "streaming endpoint on one TLS port), a device proxy that keeps an outbound connection and\n"
    "forwards each stream to a local TCP server (sshd, RDP...), and a service proxy that opens\n"
    "a stream per local connection. Includes systemd units for the relay and the device proxy.")
string(CONCAT CPACK_PACKAGE_DESCRIPTION ${CPACK_PACKAGE_DESCRIPTION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Install with DESTDIR and prefix /usr, so the install-time rules above see /usr.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/streamgate/streamgate")
# Depends computed from the binaries' shared libraries by dpkg-shlibdeps (package dpkg-dev).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "openssh-server")
# streamgate-web serves xterm.js from these packages (never vendored).
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "node-xterm, libjs-xterm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/conffiles"
    "${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postinst"
    "${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
