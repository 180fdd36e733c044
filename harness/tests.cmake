# ctest entry of cmkharness conformance (included from tests/CMakeLists.txt, after enable_testing()).
add_test(NAME conformance
  COMMAND ${CMAKE_SOURCE_DIR}/harness/run-conformance.sh $<TARGET_FILE:cmkemu> $<TARGET_FILE:cmkharness>
          ${CMAKE_BINARY_DIR}/conformance-junit.xml)
set_tests_properties(conformance PROPERTIES TIMEOUT 900)
