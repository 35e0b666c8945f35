// See mpi_error.h.
#include "parallel/mpi_error.h"

#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#include "core/error.h"

namespace par {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "(unknown)";
  return buf;
}

std::string rank_on_host() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  std::string rank = "?";
  int r = 0;
  if (initialized && !finalized && MPI_Comm_rank(MPI_COMM_WORLD, &r) == MPI_SUCCESS) {
    rank = std::to_string(r);
  } else {
    for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
      if (const char* v = std::getenv(var)) {
        rank = v;
        break;
      }
    }
  }
  return cat("rank ", rank, " on host ", host_name());
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING + 1] = {};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) {
    text[0] = '\0';
    len = 0;
  }
  throw std::runtime_error(cat(call, " failed on ", rank_on_host(), ": ",
                               len > 0 ? std::string(text, size_t(len))
                                       : cat("MPI error code ", rc)));
}

}  // namespace par
