// Process-wide set-up of the test bundle, done by a constructor before any test runs.
#ifndef MITOSIS_TEST_SUPPORT_H
#define MITOSIS_TEST_SUPPORT_H

/// How many SIGPIPEs this process has received (each a write to a pipe or socket whose reader
/// was gone, made without blocking SIGPIPE).
long mitosis_test_support_sigpipes(void);

#endif
