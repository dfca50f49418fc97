#ifndef SNAP_CZSTD_SHIM_H
#define SNAP_CZSTD_SHIM_H
// libzstd: one standard frame per object.
#include <zstd.h>
#endif
