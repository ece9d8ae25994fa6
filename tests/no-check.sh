#!/bin/sh -
# SPDX-License-Identifier: BSD-3-Clause
# Run by make check in place of the unit tests when configure did not
# find Check: a hard error (99) that says what to do.
echo "$0: the unit tests need Check, which configure did not find:" >&2
echo "  install it (Debian: apt-get install check), then run ./configure" \
  "and make check again" >&2
exit 99
