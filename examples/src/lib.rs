//! Example programs of the cluster workspace; see the `examples/` folder.
