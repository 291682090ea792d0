//! CQL store (ScyllaDB / Cassandra): being built.
