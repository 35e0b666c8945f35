# Run after each build of par_cuda_tests (cmake -P, from tests/cuda/CMakeLists.txt): writes
# OUTPUT, CTest's include file with one entry per GoogleTest suite of TEST_BINARY, each run
# through RUNNER (run_suite.sh), named par_cuda_tests:SUITE and labelled cuda.
execute_process(COMMAND "${TEST_BINARY}" --gtest_list_tests
                OUTPUT_VARIABLE listing RESULT_VARIABLE rc TIMEOUT 60)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TEST_BINARY} --gtest_list_tests exited with ${rc}:\n${listing}")
endif()
# Suite lines are the unindented ones ending in a dot (a typed suite's may go on with a
# comment); the binary's own notice before the listing is neither.
string(REGEX MATCHALL "(^|\n)[A-Za-z0-9_/]+\\." suites "${listing}")
set(content "")
foreach(match IN LISTS suites)
  string(REGEX REPLACE "^\n?(.*)\\.$" "\\1" suite "${match}")
  set(name "par_cuda_tests:${suite}")
  string(APPEND content
         "add_test([==[${name}]==] sh [==[${RUNNER}]==] [==[${TEST_BINARY}]==] [==[${suite}]==])\n"
         "set_tests_properties([==[${name}]==] PROPERTIES LABELS cuda SKIP_RETURN_CODE 77)\n")
endforeach()
if(content STREQUAL "")
  message(FATAL_ERROR "${TEST_BINARY} lists no test suite:\n${listing}")
endif()
file(WRITE "${OUTPUT}" "${content}")
