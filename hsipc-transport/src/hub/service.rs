//! What `#[hsipc::service]` generates code against: services, typed method calls and typed
//! application errors, the same for every hub.
//!
//! A generated service registers its methods with [`Service::register`]; a generated client
//! starts each call with [`MethodCall::start`] (or [`MethodStream::start`]) on any hub that
//! implements [`HasCore`]. A method's declared result `Result<T, E>` decides what travels:
//!
//! - `E` = [`Error`] (hsipc's own, or the `hsipc::Result<T>` alias): the response is `T`, and
//!   an `Err` from the implementation reaches the client as [`Error::Remote`] with its message.
//! - `E` any serde type: the response is the whole `Result<T, E>`, and the client gets
//!   `Err(ClientError::Service(e))` with the very `E` the implementation returned, distinct
//!   from hsipc's own failures (`ClientError::Hsipc(Error::Timeout)`, ...).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use proto::codec;
use proto::frame::Body;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::asynchronous::{AsyncHub, StreamSink};
use super::core::HubCore;
use super::runtime::{RuntimeKind, Spawner};
use crate::engine::{ItemReceiver, ItemSink, PendingCall};
use crate::error::{Error, Result};

/// A service's server side, as `#[hsipc::service]` generates it (`CalculatorService<T>`).
/// Hand it to a hub's `register_service`.
pub trait Service: Send + 'static {
    /// The name its methods are served under (`name.method`).
    fn name(&self) -> &str;
    /// Registers every method of the service on `hub` and announces the service.
    fn register<H: HasCore>(self, hub: &H) -> Result<()>;
}

/// A hub that generated code can use: every hub type implements it. Its items are for
/// generated code, not part of the API.
pub trait HasCore: Clone + Send + Sync + 'static {
    /// How the hub spawns async handlers.
    #[doc(hidden)]
    type Spawner: Spawner;
    /// The hub's core.
    #[doc(hidden)]
    fn core(&self) -> &HubCore;
    /// The hub's spawner for async handlers.
    #[doc(hidden)]
    fn spawner(&self) -> Self::Spawner;
}

impl<K: RuntimeKind> HasCore for AsyncHub<K> {
    type Spawner = K::Spawner;

    fn core(&self) -> &HubCore {
        &self.core
    }

    fn spawner(&self) -> K::Spawner {
        K::spawner(self.core.runtime())
    }
}

/// The error a generated client returns for a method declared `Result<T, E>` with `E` a serde
/// type: the service's own error, or hsipc's.
#[derive(Debug)]
pub enum ClientError<E> {
    /// The implementation returned `Err(e)`.
    Service(E),
    /// The call itself failed (timeout, peer lost, no such service, ...).
    Hsipc(Error),
}

impl<E> From<Error> for ClientError<E> {
    fn from(e: Error) -> Self {
        ClientError::Hsipc(e)
    }
}

impl<E: fmt::Debug> fmt::Display for ClientError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Service(e) => write!(f, "the service returned an error: {e:?}"),
            ClientError::Hsipc(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: fmt::Debug> std::error::Error for ClientError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Service(_) => None,
            ClientError::Hsipc(e) => Some(e),
        }
    }
}

/// How a method's result splits into its value and its error (implemented for `Result`).
pub trait MethodResult {
    /// The value.
    type Ok;
    /// The error.
    type Err;
}

impl<T, E> MethodResult for std::result::Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// How a service method's error type travels between processes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of a service method",
    label = "the error type of this method",
    note = "use `hsipc::Result<T>` (hsipc's own error), or an error type that implements serde's `Serialize` and `Deserialize` so that the client gets it back typed"
)]
pub trait ServiceError: Sized + Send + 'static {
    /// The error a generated client returns.
    type Client: From<Error> + Send + 'static;
    /// What travels for a value `T` (a response, or one stream item).
    type Wire<T: Serialize + DeserializeOwned + Send + 'static>: Serialize + DeserializeOwned + Send + 'static;

    /// Server side: a stream item, encoded.
    fn encode_item<T: Serialize>(item: &T) -> Result<Body>;
    /// Server side: the implementation's result as the response, or the message of a remote
    /// error.
    fn to_wire<T: Serialize + DeserializeOwned + Send + 'static>(
        r: std::result::Result<T, Self>,
    ) -> std::result::Result<Self::Wire<T>, String>;
    /// Server side: how a streaming method's end travels: `Ok(None)` a clean end, `Ok(Some)` a
    /// last item that carries the error, `Err` a remote error's message.
    fn stream_end(r: std::result::Result<(), Self>) -> std::result::Result<Option<Bytes>, String>;
    /// Client side: the response (or a stream item) as the method's result.
    fn from_wire<T: Serialize + DeserializeOwned + Send + 'static>(
        r: Result<Self::Wire<T>>,
    ) -> std::result::Result<T, Self::Client>;
}

impl ServiceError for Error {
    type Client = Error;
    type Wire<T: Serialize + DeserializeOwned + Send + 'static> = T;

    fn encode_item<T: Serialize>(item: &T) -> Result<Body> {
        Ok(codec::encode_body(item)?)
    }

    fn to_wire<T: Serialize + DeserializeOwned + Send + 'static>(
        r: std::result::Result<T, Self>,
    ) -> std::result::Result<T, String> {
        r.map_err(|e| e.to_string())
    }

    fn stream_end(r: std::result::Result<(), Self>) -> std::result::Result<Option<Bytes>, String> {
        r.map(|()| None).map_err(|e| e.to_string())
    }

    fn from_wire<T: Serialize + DeserializeOwned + Send + 'static>(r: Result<T>) -> Result<T> {
        r
    }
}

impl<E: Serialize + DeserializeOwned + Send + 'static> ServiceError for E {
    type Client = ClientError<E>;
    type Wire<T: Serialize + DeserializeOwned + Send + 'static> = std::result::Result<T, E>;

    fn encode_item<T: Serialize>(item: &T) -> Result<Body> {
        // `Ok(item)` encodes the same whatever the error type: the reader decodes it as its
        // `Result<Item, E>`.
        Ok(codec::encode_body(&std::result::Result::<&T, ()>::Ok(item))?)
    }

    fn to_wire<T: Serialize + DeserializeOwned + Send + 'static>(
        r: std::result::Result<T, E>,
    ) -> std::result::Result<std::result::Result<T, E>, String> {
        Ok(r)
    }

    fn stream_end(r: std::result::Result<(), E>) -> std::result::Result<Option<Bytes>, String> {
        match r {
            Ok(()) => Ok(None),
            // `Err(e)` encodes the same whatever the item type: the reader decodes it as its
            // `Result<Item, E>`.
            Err(e) => codec::encode(&std::result::Result::<(), E>::Err(e)).map(Some).map_err(|e| e.to_string()),
        }
    }

    fn from_wire<T: Serialize + DeserializeOwned + Send + 'static>(
        r: Result<std::result::Result<T, E>>,
    ) -> std::result::Result<T, ClientError<E>> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClientError::Service(e)),
            Err(e) => Err(ClientError::Hsipc(e)),
        }
    }
}

/// An argument or result type of a service method: it travels to another process.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel between processes as a service method's argument or result",
    label = "not an owned serde type",
    note = "arguments and results are encoded and sent to another process: use an owned type that implements serde's `Serialize` and `Deserialize` (`String`, not `&str`)"
)]
pub trait Wire: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Wire for T {}

/// Checks, at the span of a method's argument or result type, that it can travel.
pub const fn assert_wire<T: Wire>() {}

/// Checks, at the span of a method's error type, that it can travel.
pub const fn assert_service_error<E: ServiceError>() {}

/// The method name `service.method`.
fn method_name(service: &str, method: &str) -> String {
    let mut name = String::with_capacity(service.len() + 1 + method.len());
    name.push_str(service);
    name.push('.');
    name.push_str(method);
    name
}

type Ok<R> = <R as MethodResult>::Ok;
type Err<R> = <R as MethodResult>::Err;

/// What a generated client returns for a method declared with result `R`.
pub type ClientResult<R> = std::result::Result<Ok<R>, ClientErrorOf<R>>;

/// The error a generated client returns for a method declared with result `R`.
pub type ClientErrorOf<R> = <Err<R> as ServiceError>::Client;

/// One call of a generated client's method whose declared result is `R`: `.await` it, or
/// [`wait`](Self::wait) for it from a thread. The call starts when the method is called;
/// dropping this before the answer cancels the call at the server.
#[must_use = "a method call does nothing useful unless awaited or waited for; dropping it cancels the call"]
pub struct MethodCall<R> {
    started: Option<Result<PendingCall>>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for MethodCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodCall").finish_non_exhaustive()
    }
}

impl<R> MethodCall<R>
where
    R: MethodResult,
    Ok<R>: Wire,
    Err<R>: ServiceError,
{
    /// Starts `service.method` on `hub` with the encoded `args` (the default timeout if
    /// `timeout` is `None`).
    pub fn start<Args: Serialize>(
        hub: &HubCore,
        service: &str,
        method: &str,
        args: &Args,
        timeout: Option<Duration>,
    ) -> Self {
        let timeout = timeout.unwrap_or_else(|| hub.default_timeout());
        MethodCall { started: Some(hub.start_call(&method_name(service, method), args, timeout)), _result: PhantomData }
    }

    /// Calls `service.method` on `hub` and blocks the calling thread until the answer arrives:
    /// [`start`](Self::start) and [`wait`](Self::wait) in one step, which lets the thread read
    /// the reply from the lane itself (see [`HubCore::call_wait`]). What a blocking client's
    /// methods do.
    pub fn call_and_wait<Args: Serialize>(
        hub: &HubCore,
        service: &str,
        method: &str,
        args: &Args,
        timeout: Option<Duration>,
    ) -> ClientResult<R> {
        let timeout = timeout.unwrap_or_else(|| hub.default_timeout());
        finish::<R>(hub.call_wait(&method_name(service, method), args, timeout))
    }

    /// Blocks the calling thread until the answer arrives.
    pub fn wait(mut self) -> ClientResult<R> {
        let bytes = match self.started.take() {
            Some(Ok(call)) => call.wait(),
            Some(Err(e)) => Err(e),
            None => Err(Error::Closed),
        };
        finish::<R>(bytes)
    }
}

fn finish<R>(bytes: Result<Bytes>) -> ClientResult<R>
where
    R: MethodResult,
    Ok<R>: Wire,
    Err<R>: ServiceError,
{
    let wire = bytes.and_then(|b| Ok(codec::decode_from::<<Err<R> as ServiceError>::Wire<Ok<R>>>(&b)?));
    <Err<R> as ServiceError>::from_wire(wire)
}

impl<R> Future for MethodCall<R>
where
    R: MethodResult,
    Ok<R>: Wire,
    Err<R>: ServiceError,
{
    type Output = ClientResult<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ClientResult<R>> {
        let this = self.get_mut();
        let bytes = match &mut this.started {
            Some(Ok(call)) => match Pin::new(call).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            },
            Some(Err(_)) => match this.started.take() {
                Some(Err(e)) => Err(e),
                _ => Err(Error::Closed),
            },
            None => Err(Error::Closed),
        };
        Poll::Ready(finish::<R>(bytes))
    }
}

/// The items of an async client's streaming method whose items are `Item` and whose declared
/// result is `R`, as a [`Stream`]. The server runs ahead by at most the credit window; dropping
/// this cancels it at the server. A service error ends the stream with
/// `Err(ClientError::Service(e))`.
pub struct MethodStream<Item, R> {
    items: Option<ItemReceiver>,
    _item: PhantomData<fn() -> (Item, R)>,
}

impl<Item, R> fmt::Debug for MethodStream<Item, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodStream").finish_non_exhaustive()
    }
}

type ItemResult<Item, R> = std::result::Result<Item, ClientErrorOf<R>>;

impl<Item, R> MethodStream<Item, R>
where
    Item: Wire,
    R: MethodResult,
    Err<R>: ServiceError,
{
    /// Starts streaming `service.method` on `hub` with the encoded `args`.
    pub fn start<Args: Serialize>(
        hub: &HubCore,
        service: &str,
        method: &str,
        args: &Args,
        timeout: Option<Duration>,
    ) -> std::result::Result<Self, ClientErrorOf<R>> {
        let timeout = timeout.unwrap_or_else(|| hub.default_timeout());
        let items = hub.start_stream(&method_name(service, method), args, timeout)?;
        Ok(MethodStream { items: Some(items), _item: PhantomData })
    }

    /// Maps one received item; a service error ends the stream.
    fn map(&mut self, item: Option<Result<Bytes>>) -> Option<ItemResult<Item, R>> {
        let wire = item?.and_then(|b| Ok(codec::decode_from::<<Err<R> as ServiceError>::Wire<Item>>(&b)?));
        let r = <Err<R> as ServiceError>::from_wire(wire);
        if r.is_err() {
            self.items = None; // ends it (and cancels, if the server had not finished)
        }
        Some(r)
    }
}

impl<Item, R> Stream for MethodStream<Item, R>
where
    Item: Wire,
    R: MethodResult,
    Err<R>: ServiceError,
{
    type Item = ItemResult<Item, R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(items) = this.items.as_mut() else { return Poll::Ready(None) };
        match Pin::new(items).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(item) => Poll::Ready(this.map(item)),
        }
    }
}

/// The items of a blocking client's streaming method, as an [`Iterator`]: each `next` blocks
/// for the next item. Otherwise as [`MethodStream`].
pub struct MethodIter<Item, R>(MethodStream<Item, R>);

impl<Item, R> fmt::Debug for MethodIter<Item, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodIter").finish_non_exhaustive()
    }
}

impl<Item, R> MethodIter<Item, R>
where
    Item: Wire,
    R: MethodResult,
    Err<R>: ServiceError,
{
    /// Starts streaming `service.method` on `hub` with the encoded `args`.
    pub fn start<Args: Serialize>(
        hub: &HubCore,
        service: &str,
        method: &str,
        args: &Args,
        timeout: Option<Duration>,
    ) -> std::result::Result<Self, ClientErrorOf<R>> {
        MethodStream::start(hub, service, method, args, timeout).map(MethodIter)
    }
}

impl<Item, R> Iterator for MethodIter<Item, R>
where
    Item: Wire,
    R: MethodResult,
    Err<R>: ServiceError,
{
    type Item = ItemResult<Item, R>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.0.items.as_mut()?.recv().transpose();
        self.0.map(item)
    }
}

/// The sink a generated streaming method gets: its items carry the method's error framing.
pub fn method_sink<Item, E>(sink: ItemSink) -> StreamSink<Item>
where
    Item: Wire,
    E: ServiceError,
{
    StreamSink::with_encoder(sink, E::encode_item::<Item>)
}

/// Ends a generated streaming method: a service error travels as a last item (or as a remote
/// error, for hsipc's own error type).
pub async fn end_stream<E: ServiceError>(
    sink: ItemSink,
    r: std::result::Result<(), E>,
) -> std::result::Result<(), String> {
    match E::stream_end(r)? {
        None => Ok(()),
        Some(last) => sink.send_async(last).await.map_err(|e| e.to_string()),
    }
}

/// [`end_stream`] for a blocking streaming method.
pub fn end_stream_blocking<E: ServiceError>(
    sink: ItemSink,
    r: std::result::Result<(), E>,
) -> std::result::Result<(), String> {
    match E::stream_end(r)? {
        None => Ok(()),
        Some(last) => sink.send(last).map_err(|e| e.to_string()),
    }
}
