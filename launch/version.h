// Which par this is: the commit it was built from (launch/version.cmake writes the
// definition at every build), for `par --version` and the head of a run's log.
#pragma once

namespace par {

const char* version();

}  // namespace par
