# run(COMMAND...): execute_process that stops the script, naming the command,
# when it fails. Shared by the consumer checks run as ctest scripts.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
