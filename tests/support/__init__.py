"""Support code for the test suite: real components (MLServer, Redis, moto) and thin fronts."""
