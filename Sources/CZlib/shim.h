#ifndef SNAP_CZLIB_SHIM_H
#define SNAP_CZLIB_SHIM_H
// zlib: deflate and gzip framing for the classic tar.gz.
#include <zlib.h>
#endif
