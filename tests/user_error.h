// The message of the UserError a call must throw, for tests of bad input.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"

namespace par::testing_util {

// What fn() threw as a UserError; a test failure (and "") when it threw none.
template <typename Fn>
std::string user_error_of(Fn fn) {
  try {
    fn();
  } catch (const UserError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a UserError";
  return "";
}

}  // namespace par::testing_util

// The message holds `part`.
#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << (msg)
