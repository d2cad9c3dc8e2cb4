//! The gRPC baseline's service: `rafi.baseline.Echo/Echo`, a unary call with bytes in and
//! bytes out, written out by hand as tonic-build would generate it from
//!
//! ```proto
//! syntax = "proto3";
//! package rafi.baseline;
//! message EchoRequest { bytes payload = 1; }
//! message EchoReply { bytes payload = 1; }
//! service Echo { rpc Echo(EchoRequest) returns (EchoReply); }
//! ```
//!
//! so that building it needs no protoc. The payload is a `bytes::Bytes` (prost's `bytes =
//! "bytes"` option): decoding slices the received buffer instead of copying it, which is
//! what a user who cares about large messages configures.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::payload::Corrupter;

/// The service's full name.
pub const SERVICE: &str = "rafi.baseline.Echo";
/// The path of its one method.
pub const ECHO_PATH: &str = "/rafi.baseline.Echo/Echo";
/// Largest message either side accepts: the largest payload plus protobuf framing (tonic's
/// default limit, 4 MiB, is just below a 4 MiB payload's message).
pub const MAX_MESSAGE: usize = crate::sizes::MAX_SIZE + 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: prost::bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: prost::bytes::Bytes,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The server: answers each `Echo` with the request's payload.
#[derive(Clone, Default)]
pub struct EchoServer {
    /// Test-only fault injection (see [`Corrupter`]).
    corrupter: Arc<Mutex<Corrupter>>,
}

impl EchoServer {
    pub fn new(corrupt_at: Option<u64>) -> Self {
        Self {
            corrupter: Arc::new(Mutex::new(Corrupter::new(corrupt_at))),
        }
    }
}

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

/// The `Echo` method itself.
struct EchoMethod(EchoServer);

impl UnaryService<EchoRequest> for EchoMethod {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let corrupter = Arc::clone(&self.0.corrupter);
        Box::pin(async move {
            let payload = request.into_inner().payload;
            let mut guard = corrupter
                .lock()
                .map_err(|_| Status::internal("fault injection state poisoned"))?;
            let payload = if guard.is_armed() {
                let mut copy = payload.to_vec();
                guard.apply(&mut copy);
                copy.into()
            } else {
                guard.apply(&mut []);
                payload
            };
            Ok(Response::new(EchoReply { payload }))
        })
    }
}

impl tonic::codegen::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != ECHO_PATH {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let method = EchoMethod(self.clone());
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The client: one `Echo` call at a time over a channel.
#[derive(Debug, Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    /// Calls `Echo` with `payload`.
    ///
    /// # Errors
    /// The call's status: the server is unreachable, or answered with an error.
    pub async fn echo(&mut self, payload: prost::bytes::Bytes) -> Result<EchoReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the server is not reachable: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(ECHO_PATH);
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let reply = self
            .grpc
            .unary(Request::new(EchoRequest { payload }), path, codec)
            .await?;
        Ok(reply.into_inner())
    }
}
