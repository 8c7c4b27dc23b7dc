//! `#[hsipc::service]`: one trait declaration gives typed clients and server dispatch.
//!
//! Use it through the `hsipc` crate (`hsipc::service`); the generated code names items of
//! `hsipc`, so that crate must be a dependency.
//!
//! # What it generates
//!
//! For a trait `Calculator`:
//!
//! ```ignore
//! #[hsipc::service]                      // or #[hsipc::service(name = "calc")]
//! pub trait Calculator {
//!     async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
//!     fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;    // DivError: serde
//!     #[hsipc(name = "count_up")]                                 // the name on the wire
//!     #[hsipc(stream)]
//!     async fn count(&self, n: u32, sink: hsipc::StreamSink<u32>) -> hsipc::Result<()>;
//! }
//! ```
//!
//! - **The trait**, as you implement it: each `async fn` becomes
//!   `fn add(&self, a: i64, b: i64) -> impl Future<Output = hsipc::Result<i64>> + Send` (an
//!   implementation still writes `async fn`, and needs no `async_trait`), and the trait gets
//!   `Send + Sync + 'static` as supertraits.
//! - **`CalculatorService<I>`**: `CalculatorService::new(imp)` (or `::with_name(imp, "calc2")`
//!   for a second implementation beside the first) is handed to any hub's `register_service`;
//!   each method is served as `Calculator.add` (the service name defaults to the trait's name).
//! - **`CalculatorClient<H>`**: `CalculatorClient::new(hub.clone())`, for the tokio or the smol
//!   hub; `client.add(2, 3).await` returns the method's result. `::with_name(hub, "calc2")`
//!   calls another implementation; `.with_timeout(d)` sets the client's timeout and
//!   `client.timeout(d).add(..)` one call's. Dropping a call future cancels the call at the
//!   server. A streaming method returns a `Stream` of items.
//! - **`CalculatorBlockingClient<H>`**: the same methods, blocking, for the blocking hub;
//!   streaming methods give an `Iterator`.
//!
//! In code, for `#[hsipc::service] pub trait Greeter { async fn hello(&self, name: String) ->
//! hsipc::Result<String>; }` the expansion is, in short:
//!
//! ```ignore
//! pub trait Greeter: Send + Sync + 'static {
//!     fn hello(&self, name: String) -> impl Future<Output = hsipc::Result<String>> + Send;
//! }
//!
//! pub struct GreeterService<I> { /* Arc<I>, the service name */ }
//! impl<I: Greeter> GreeterService<I> {
//!     pub const DEFAULT_NAME: &'static str = "Greeter";
//!     pub fn new(imp: I) -> Self;
//!     pub fn with_name(imp: I, name: &str) -> Self;
//! }
//! impl<I: Greeter> hsipc::Service for GreeterService<I> { /* serves "Greeter.hello" */ }
//!
//! pub struct GreeterClient<H> { /* the hub, the service name, a timeout */ }
//! impl<H: HasCore> GreeterClient<H> {
//!     pub fn new(hub: H) -> Self;
//!     pub fn with_name(hub: H, service: &str) -> Self;
//!     pub fn with_timeout(self, timeout: Duration) -> Self;
//!     pub fn timeout(&self, timeout: Duration) -> Self;       // for one call
//!     pub fn service_name(&self) -> &str;
//!     pub fn hello(&self, name: String) -> hsipc::MethodCall<hsipc::Result<String>>; // a Send future
//! }
//!
//! pub struct GreeterBlockingClient<H> { /* the same */ }
//! impl<H: HasCore> GreeterBlockingClient<H> {
//!     // new, with_name, with_timeout, timeout, service_name as above, and:
//!     pub fn hello(&self, name: String) -> hsipc::Result<String>;
//! }
//! ```
//!
//! # Methods
//!
//! A method takes `&self` and owned serde arguments (any number, zero included), and returns
//! `Result<T, E>`:
//!
//! - with `E` = `hsipc::Error` (`hsipc::Result<T>`), an implementation's `Err` reaches the
//!   client as `hsipc::Error::Remote` with its message, and the client returns
//!   `hsipc::Result<T>`;
//! - with `E` a serde type of your own, the client returns `Result<T, hsipc::ClientError<E>>`:
//!   `ClientError::Service(e)` is exactly the `e` the implementation returned, and
//!   `ClientError::Hsipc(..)` is hsipc's own failure (timeout, peer lost, ...).
//!
//! A method may also take `ctx: &hsipc::CallContext` among its arguments: the implementation
//! then sees its call (the caller's hub name, pid and uid, the deadline, and whether the call is
//! still wanted: `is_cancelled()`, or `cancelled().await`); clients do not pass it.
//!
//! ```ignore
//! #[hsipc::service]
//! pub trait Indexer {
//!     fn reindex(&self, root: String, ctx: &hsipc::CallContext) -> hsipc::Result<u64>;
//! }
//! impl Indexer for Disk {
//!     fn reindex(&self, root: String, ctx: &hsipc::CallContext) -> hsipc::Result<u64> {
//!         let mut done = 0;
//!         for dir in self.dirs(&root) {
//!             if ctx.is_cancelled() {
//!                 break; // the caller gave up, left or died: stop working for nobody
//!             }
//!             done += self.index(dir);
//!         }
//!         Ok(done)
//!     }
//! }
//! ```
//!
//! A streaming method (`#[hsipc(stream)]`) takes `sink: hsipc::StreamSink<Item>` as its last
//! argument and sends with `sink.send(&item).await` (async) or `sink.send_blocking(&item)`
//! (plain `fn`); each send waits for the reader's credit. Its `Err(e)` ends the client's
//! stream with that error.
//!
//! A session method (`#[hsipc(session)]`, an `async fn`) takes `session: hsipc::ServerSession<In,
//! Out>` last: a full-duplex channel with the client, whose method opens an
//! `hsipc::Session<In, Out>` (a `Stream` of `Out` with `send(&In).await`; the blocking client
//! uses its `send_blocking` / `recv_blocking`).
//!
//! # Where methods run
//!
//! | method | blocking hub | tokio hub | smol hub |
//! |---|---|---|---|
//! | `async fn` | on a worker thread, driven to completion there | a tokio task | a task on smol's executor |
//! | `fn` | on a worker thread | tokio's blocking pool (`spawn_blocking`) | smol's blocking pool |
//! | `#[hsipc(inline)] fn` | on the thread that read the request | the same | the same |
//!
//! `#[hsipc(inline)]` is for plain unary methods that return at once (no I/O, no waiting, no
//! call to another hub): it saves handing the call to a worker or a task, and while it runs
//! nothing else from the calling hub is read.
//!
//! # Misuse is a compile error
//!
//! At the span to change: an argument, result or error type that cannot travel (not serde, or
//! borrowed), `&mut self` or no receiver, a generic method or trait, a method that does not
//! return `Result`, a method with a body, and a method named like a generated client method
//! (`new`, `with_name`, `with_timeout`, `timeout`, `service_name`, `hub`).
//!
//! # The earlier hsipc's names
//!
//! `#[service_trait]` is `#[service]`; `#[service_impl]` on `impl Calculator for
//! BasicCalculator` adds the alias `type BasicCalculatorService = CalculatorService<BasicCalculator>`,
//! so `BasicCalculatorService::new(calculator)` works as it did.

mod expand;
mod parse;

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{ItemImpl, ItemTrait, Type, parse_macro_input};

/// Turns a trait into a service: the trait to implement, `{Trait}Service` (server dispatch),
/// `{Trait}Client` (async) and `{Trait}BlockingClient`. See the crate docs.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemTrait);
    let name = match parse::service_name(attr.into(), &item.ident) {
        Ok(n) => n,
        Err(e) => return e.to_compile_error().into(),
    };
    match parse::ServiceDef::parse(item, name) {
        Ok(def) => expand::service(def).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The earlier hsipc's name for [`macro@service`].
#[proc_macro_attribute]
pub fn service_trait(attr: TokenStream, item: TokenStream) -> TokenStream {
    service(attr, item)
}

/// On `impl Trait for Type`: keeps the impl as it is and adds
/// `type TypeService = TraitService<Type>`, the earlier hsipc's name for the service of that
/// implementation. Not needed otherwise: `TraitService::new(value)` does the same.
#[proc_macro_attribute]
pub fn service_impl(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let imp = parse_macro_input!(item as ItemImpl);
    let alias = (|| {
        let (_, trait_path, _) = imp.trait_.as_ref()?;
        let Type::Path(self_ty) = &*imp.self_ty else { return None };
        if !imp.generics.params.is_empty() || self_ty.qself.is_some() || self_ty.path.segments.len() != 1 {
            return None;
        }
        let self_seg = self_ty.path.segments.last()?;
        if !self_seg.arguments.is_empty() {
            return None;
        }
        let alias = format_ident!("{}Service", self_seg.ident);
        let mut service_path = trait_path.clone();
        let last = service_path.segments.last_mut()?;
        last.ident = format_ident!("{}Service", last.ident);
        let self_ident = &self_seg.ident;
        Some(quote! {
            #[allow(dead_code)]
            type #alias = #service_path<#self_ident>;
        })
    })();
    match alias {
        Some(alias) => quote!(#imp #alias).into(),
        None => syn::Error::new_spanned(
            &imp.self_ty,
            "#[service_impl] goes on `impl Trait for Type` with a plain, non-generic type; otherwise use `TraitService::new(value)`",
        )
        .to_compile_error()
        .into(),
    }
}
