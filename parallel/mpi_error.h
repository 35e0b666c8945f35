// Checking MPI calls where they are made: every failure becomes an exception whose message
// names the call, MPI's own description of the error, and the world rank and host it
// happened on, because in a job of hundreds of ranks "MPI_ERR_TRUNCATE" alone says nothing.
#pragma once

#include <mpi.h>

#include <string>

namespace par {

// This machine's host name (the UTS name: what `hostname` prints).
std::string host_name();

// "rank 3 on host node17": the world rank once MPI is initialized (before that, the rank the
// launcher announced in the environment, or "?").
std::string rank_on_host();

// Throws std::runtime_error("MPI_Bcast failed on rank 3 on host node17: <MPI's message>")
// unless rc is MPI_SUCCESS. Needs MPI_ERRORS_RETURN on the communicator (MpiEnvironment
// and MpiCommunicator set it); with the default handler MPI aborts before returning.
void check_mpi(int rc, const char* call);

}  // namespace par
