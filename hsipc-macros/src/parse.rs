//! Reading a service trait: its methods, their arguments and results, and every misuse as a
//! compile error at the span that has to change.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type,
};

/// Names the generated clients and services use for their own methods: a trait method of the
/// same name would collide with them.
const RESERVED: &[&str] = &["new", "with_name", "with_timeout", "timeout", "service_name", "hub"];

/// A service trait, read.
pub(crate) struct ServiceDef {
    pub(crate) item: ItemTrait,
    /// The service name methods are served under by default.
    pub(crate) name: String,
    pub(crate) methods: Vec<MethodDef>,
}

/// One method of a service trait.
pub(crate) struct MethodDef {
    pub(crate) ident: Ident,
    /// The method part of `service.method` on the wire.
    pub(crate) wire_name: String,
    pub(crate) is_async: bool,
    /// The arguments sent to the server (the sink of a streaming method excluded).
    pub(crate) args: Vec<(Ident, Type)>,
    /// Where the method takes `&CallContext` (the number of sent arguments before it): the
    /// implementation gets the call's context there; clients do not pass it.
    pub(crate) ctx_at: Option<usize>,
    /// The declared result, `Result<T, E>`.
    pub(crate) ret: Type,
    /// For a streaming method: the item type.
    pub(crate) stream_item: Option<Type>,
    /// For a session method: the message types (client to server, server to client).
    pub(crate) session: Option<(Type, Type)>,
    /// `#[hsipc(inline)]`: served on the thread that reads the request.
    pub(crate) inline: bool,
    pub(crate) docs: Vec<Attribute>,
}

/// `#[hsipc::service(name = "...")]` arguments.
pub(crate) fn service_name(attr: proc_macro2::TokenStream, default: &Ident) -> syn::Result<String> {
    let mut name = default.to_string();
    if attr.is_empty() {
        return Ok(name);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            name = checked_name(&lit, "service")?;
            Ok(())
        } else {
            Err(meta.error("unknown argument: `#[hsipc::service]` takes only `name = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(name)
}

fn checked_name(lit: &LitStr, what: &str) -> syn::Result<String> {
    let v = lit.value();
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new(
            lit.span(),
            format!("a {what} name is non-empty, without spaces or control characters"),
        ));
    }
    if what == "method" && v.contains('.') {
        return Err(syn::Error::new(
            lit.span(),
            "a method name cannot contain `.` (it separates the service from the method)",
        ));
    }
    Ok(v)
}

impl ServiceDef {
    pub(crate) fn parse(mut item: ItemTrait, name: String) -> syn::Result<ServiceDef> {
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            return Err(generics_error(
                &item.generics,
                "a service trait cannot be generic: every process must agree on its types; use concrete types",
            ));
        }
        let mut errors: Option<syn::Error> = None;
        let mut methods = Vec::new();
        for trait_item in &mut item.items {
            let result = match trait_item {
                TraitItem::Fn(f) => MethodDef::parse(f),
                other => Err(syn::Error::new_spanned(
                    other,
                    "a service trait holds only methods (each one a call another process can make); move this item out of the trait",
                )),
            };
            match result {
                Ok(m) => methods.push(m),
                Err(e) => match &mut errors {
                    Some(all) => all.combine(e),
                    None => errors = Some(e),
                },
            }
        }
        if let Some(e) = errors {
            return Err(e);
        }
        Ok(ServiceDef { item, name, methods })
    }
}

impl MethodDef {
    fn parse(f: &mut TraitItemFn) -> syn::Result<MethodDef> {
        let MethodAttrs { name: wire_name, stream, session, inline } = method_attrs(&mut f.attrs)?;
        let sig = &f.sig;
        let ident = sig.ident.clone();
        let wire_name = wire_name.unwrap_or_else(|| ident.to_string());
        if RESERVED.contains(&ident.to_string().as_str()) {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{ident}` collides with a method of the generated client; rename the method, and keep its name on the wire with `#[hsipc(name = \"{ident}\")]`"
                ),
            ));
        }
        if let Some(body) = &f.default {
            return Err(syn::Error::new(
                body.span(),
                "declare service methods without a body; implement them in `impl Trait for YourType`",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            return Err(generics_error(
                &sig.generics,
                "a service method cannot be generic: the other process must know the concrete types; use concrete types",
            ));
        }
        if let Some(v) = &sig.variadic {
            return Err(syn::Error::new(v.span(), "a service method cannot be variadic"));
        }
        check_receiver(sig)?;
        let ret = match &sig.output {
            ReturnType::Type(_, ty) if is_result(ty) => (**ty).clone(),
            ReturnType::Type(_, ty) => {
                return Err(syn::Error::new_spanned(
                    ty,
                    "a service method returns `Result<T, E>` (or `hsipc::Result<T>`): a call to another process can always fail",
                ));
            }
            ReturnType::Default => {
                return Err(syn::Error::new(
                    sig.paren_token.span.join(),
                    "a service method returns `Result<T, E>` (or `hsipc::Result<T>`); for no value, `Result<(), E>`",
                ));
            }
        };
        let mut args = Vec::new();
        let mut ctx_at = None;
        for (i, arg) in sig.inputs.iter().skip(1).enumerate() {
            let FnArg::Typed(pt) = arg else { continue };
            if is_context(&pt.ty) {
                if ctx_at.is_some() {
                    return Err(syn::Error::new(pt.ty.span(), "a method takes the call's context once"));
                }
                ctx_at = Some(args.len());
                continue;
            }
            let name = match &*pt.pat {
                Pat::Ident(p) => p.ident.clone(),
                _ => Ident::new(&format!("arg{i}"), pt.pat.span()),
            };
            args.push((name, (*pt.ty).clone()));
        }
        // Borrowed types cannot travel; said here, before the compiler's more obscure
        // "implementation of `Deserialize` is not general enough".
        let (ok, err) = result_args(&ret);
        for ty in args.iter().map(|(_, t)| t).chain(ok).chain(err) {
            check_owned(ty)?;
        }
        let stream_item = match stream {
            None => None,
            Some(span) => {
                let Some((_, sink)) = args.pop() else {
                    return Err(syn::Error::new(
                        span,
                        "a streaming method takes its sink as its last argument: `sink: hsipc::StreamSink<Item>`",
                    ));
                };
                let item = sink_item(&sink)?;
                check_owned(&item)?;
                Some(item)
            }
        };
        let session = match session {
            None => None,
            Some(span) => {
                if stream_item.is_some() {
                    return Err(syn::Error::new(span, "a method is a stream or a session, not both"));
                }
                if sig.asyncness.is_none() {
                    return Err(syn::Error::new(
                        span,
                        "a session method is an `async fn` (it runs as a task on every hub)",
                    ));
                }
                let Some((_, end)) = args.pop() else {
                    return Err(syn::Error::new(
                        span,
                        "a session method takes its end of the session as its last argument: `session: hsipc::ServerSession<In, Out>`",
                    ));
                };
                let (client_to_server, server_to_client) = session_types(&end)?;
                check_owned(&client_to_server)?;
                check_owned(&server_to_client)?;
                Some((client_to_server, server_to_client))
            }
        };
        if let Some(span) = inline {
            if sig.asyncness.is_some() || stream_item.is_some() || session.is_some() {
                return Err(syn::Error::new(
                    span,
                    "`#[hsipc(inline)]` is for plain unary methods (no `async`, no stream, no session): they run on the thread that reads the request, and must return at once",
                ));
            }
        }
        let docs = f.attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect();
        Ok(MethodDef {
            ident,
            wire_name,
            is_async: sig.asyncness.is_some(),
            args,
            ctx_at,
            ret,
            stream_item,
            session,
            inline: inline.is_some(),
            docs,
        })
    }
}

/// What `#[hsipc(...)]` says about a method (each flag with where it was written).
struct MethodAttrs {
    name: Option<String>,
    stream: Option<Span>,
    session: Option<Span>,
    inline: Option<Span>,
}

/// Reads and removes `#[hsipc(...)]` on a method: its wire name, and whether it streams, is a
/// session or is served inline.
fn method_attrs(attrs: &mut Vec<Attribute>) -> syn::Result<MethodAttrs> {
    let mut name = None;
    let mut stream = None;
    let mut session = None;
    let mut inline = None;
    let mut error: Option<syn::Error> = None;
    attrs.retain(|a| {
        if !a.path().is_ident("hsipc") {
            return true;
        }
        let r = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                name = Some(checked_name(&lit, "method")?);
                Ok(())
            } else if meta.path.is_ident("stream") {
                stream = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("session") {
                session = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("inline") {
                inline = Some(meta.path.span());
                Ok(())
            } else {
                Err(meta.error("unknown argument: a method takes `#[hsipc(name = \"...\")]`, `#[hsipc(stream)]`, `#[hsipc(session)]` and `#[hsipc(inline)]`"))
            }
        });
        if let Err(e) = r {
            error = Some(e);
        }
        false
    });
    if let Some(e) = error {
        return Err(e);
    }
    Ok(MethodAttrs { name, stream, session, inline })
}

fn check_receiver(sig: &syn::Signature) -> syn::Result<()> {
    let msg =
        "a service method takes `&self`: calls run concurrently, so keep mutable state behind a `Mutex` or an atomic";
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {
            Ok(())
        }
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.colon_token.is_none() => {
            Err(syn::Error::new_spanned(r, format!("{msg}; write `&self`")))
        }
        Some(FnArg::Receiver(r)) => Err(syn::Error::new_spanned(
            r,
            "a service method takes `&self`: one implementation serves every call, so no call can take it; write `&self`",
        )),
        _ => Err(syn::Error::new(sig.ident.span(), format!("{msg}; add `&self` as the first argument"))),
    }
}

/// An error at a trait's or a method's generics: the parameters, or else the where clause.
fn generics_error(generics: &syn::Generics, msg: &str) -> syn::Error {
    match &generics.where_clause {
        Some(w) if generics.params.is_empty() => syn::Error::new_spanned(w, msg),
        _ => syn::Error::new_spanned(generics, msg),
    }
}

/// Rejects a borrowed type (`&str`, `&[u8]`, `Foo<'a>`) anywhere in an argument, result or
/// item type: what travels to another process is decoded there into an owned value.
fn check_owned(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(r) => {
            let owned = match &*r.elem {
                Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => "String".to_string(),
                Type::Slice(s) => format!("Vec<{}>", type_text(&s.elem)),
                elem => type_text(elem),
            };
            Err(syn::Error::new_spanned(
                r,
                format!(
                    "a borrowed type cannot travel between processes: a service method's arguments and results are owned; use `{owned}`"
                ),
            ))
        }
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                check_owned(&q.ty)?;
            }
            for seg in &p.path.segments {
                let PathArguments::AngleBracketed(args) = &seg.arguments else { continue };
                for arg in &args.args {
                    match arg {
                        GenericArgument::Type(t) => check_owned(t)?,
                        GenericArgument::Lifetime(l) if l.ident != "static" => {
                            return Err(syn::Error::new_spanned(
                                l,
                                "a borrowed type cannot travel between processes: a service method's arguments and results are owned; use a type without a lifetime (or `'static`)",
                            ));
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        Type::Tuple(t) => t.elems.iter().try_for_each(check_owned),
        Type::Array(a) => check_owned(&a.elem),
        Type::Slice(s) => check_owned(&s.elem),
        Type::Paren(p) => check_owned(&p.elem),
        Type::Group(g) => check_owned(&g.elem),
        _ => Ok(()),
    }
}

/// A type as a user writes it (`Vec<u8>`, not `Vec < u8 >`), for a message.
fn type_text(ty: &Type) -> String {
    quote::quote!(#ty)
        .to_string()
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ::", "::")
        .replace(":: ", "::")
        .replace(" ,", ",")
}

/// The `T` and `E` written in `Result<T, E>` (or `T` alone in `Result<T>`).
pub(crate) fn result_args(ret: &Type) -> (Option<&Type>, Option<&Type>) {
    let Type::Path(p) = ret else { return (None, None) };
    let Some(last) = p.path.segments.last() else { return (None, None) };
    let PathArguments::AngleBracketed(args) = &last.arguments else { return (None, None) };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    (types.next(), types.next())
}

/// Whether `ty` is `&CallContext` (under any path).
fn is_context(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    matches!(&*r.elem, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "CallContext"))
}

fn is_result(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Result"))
}

/// The message types of a session argument `ServerSession<In, Out>`.
fn session_types(ty: &Type) -> syn::Result<(Type, Type)> {
    let err = || {
        syn::Error::new(
            ty.span(),
            "the last argument of a session method is its end of the session: `hsipc::ServerSession<In, Out>`",
        )
    };
    let Type::Path(p) = ty else { return Err(err()) };
    let last = p.path.segments.last().ok_or_else(err)?;
    if last.ident != "ServerSession" {
        return Err(err());
    }
    let PathArguments::AngleBracketed(generics) = &last.arguments else { return Err(err()) };
    let mut types = generics.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(err()),
    }
}

/// The `Item` of a sink argument `StreamSink<Item>`.
fn sink_item(ty: &Type) -> syn::Result<Type> {
    let err = || {
        syn::Error::new_spanned(
            ty,
            "the last argument of a streaming method is its sink: `sink: hsipc::StreamSink<Item>`; move it last, or add one",
        )
    };
    let Type::Path(p) = ty else { return Err(err()) };
    let last = p.path.segments.last().ok_or_else(err)?;
    if last.ident != "StreamSink" {
        return Err(err());
    }
    let PathArguments::AngleBracketed(generics) = &last.arguments else { return Err(err()) };
    match generics.args.first() {
        Some(GenericArgument::Type(item)) if generics.args.len() == 1 => Ok(item.clone()),
        _ => Err(err()),
    }
}
