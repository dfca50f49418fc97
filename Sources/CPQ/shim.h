#ifndef SNAP_CPQ_SHIM_H
#define SNAP_CPQ_SHIM_H
// libpq: connection checks and the facts recorded with each snapshot.
#include <libpq-fe.h>
#endif
