//! What the examples share: the gRPC example's generated code ([`ticker`]), which the tests'
//! tonic client uses too. The examples themselves are in `examples/`.

/// The `ticker` gRPC service (`proto/ticker.proto`): server and client, as tonic generates
/// them.
#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
pub mod ticker {
    tonic::include_proto!("ticker");
}
