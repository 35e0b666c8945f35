// Bytes of HDF5 files as they lie on disk, for tests that damage them in a chosen place.
#pragma once

#include <string>

namespace par::testing_util {

// The datatype message of an IEEE little-endian float32 (HDF5 file format, version 1):
// class and version, bit fields (byte 1: bit 0 the byte order), size (bytes 4-7), bit
// offset, precision, exponent and mantissa fields, exponent bias (bytes 16-19).
inline const std::string kFloat32LeTypeMessage{
    '\x11', '\x20', '\x1f', '\x00', '\x04', '\x00', '\x00', '\x00', '\x00', '\x00',
    '\x20', '\x00', '\x17', '\x08', '\x00', '\x17', '\x7f', '\x00', '\x00', '\x00'};

}  // namespace par::testing_util
