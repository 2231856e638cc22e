//! `#[command_handler]` and `#[event_handler]`: check the signature, then
//! register the function with what eda-core needs to call it.
//!
//! Parse → check → expand. Signature mistakes are reported here, at the
//! user's tokens; what only the type checker can tell (is this a command, a
//! unit of work, an adapter, is the future `Send`, is the return type
//! right) is asked of it by eda-core's generic `command_handler` /
//! `event_handler` and the parameter makers (`dep`, `uow`, `by_value`),
//! each named with the span of the user's tokens, so that its error lands
//! there, once. The macro writes no control flow: calling the handler is
//! eda-core's `handler` module.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, PathArguments, ReturnType, Type, TypeReference};

use crate::ctxt::{Ctxt, respan};
use crate::message::Kind;

/// How a handler takes its message.
enum MessageParam {
    ByValue(Type),
    ByRef(Type),
}

impl MessageParam {
    fn ty(&self) -> &Type {
        match self {
            MessageParam::ByValue(t) | MessageParam::ByRef(t) => t,
        }
    }
}

/// A parameter after the message.
enum Param {
    UnitOfWork(Type),
    Dependency(Type),
}

struct Signature {
    name: Ident,
    message: MessageParam,
    params: Vec<Param>,
    output: Option<Type>,
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Command => "command",
        Kind::Event => "event",
    }
}

fn check_reference(r: &TypeReference, cx: &mut Ctxt) {
    if let Some(lifetime) = &r.lifetime {
        cx.error(
            lifetime,
            "handler parameters take no lifetime: the bus lends them for the call",
        );
    }
}

fn parse(item: &ItemFn, kind: Kind, cx: &mut Ctxt) -> Option<Signature> {
    let sig = &item.sig;
    let noun = what(kind);
    if sig.asyncness.is_none() {
        cx.error(
            sig.fn_token,
            format_args!("a {noun} handler must be an `async fn`"),
        );
    }
    if let Some(c) = &sig.constness {
        cx.error(c, format_args!("a {noun} handler cannot be `const`"));
    }
    if let Some(u) = &sig.unsafety {
        cx.error(u, format_args!("a {noun} handler cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        cx.error(abi, format_args!("a {noun} handler cannot have an ABI"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error(
            &sig.generics,
            format_args!(
                "a {noun} handler cannot be generic: the bus registers it for one concrete {noun} type"
            ),
        );
    }
    if let Some(v) = &sig.variadic {
        cx.error(v, format_args!("a {noun} handler cannot be variadic"));
    }

    let example = match kind {
        Kind::Command => "`(cmd: Allocate, …)` or `(cmd: &Allocate, …)`",
        Kind::Event => "`(event: &Allocated, …)` or `(event: Allocated, …)`",
    };
    let mut inputs = sig.inputs.iter().peekable();
    // A method: say so once, and read the parameter after `self` as the
    // message, so that the rest is checked as the user meant it.
    if let Some(FnArg::Receiver(r)) = inputs.peek() {
        cx.error(
            r,
            format_args!(
                "a {noun} handler is a free function, not a method: remove `self` and move it out of the `impl` block"
            ),
        );
        inputs.next();
    }
    let message = match inputs.next() {
        None => {
            cx.error(
                &sig.ident,
                format_args!(
                    "a {noun} handler takes the {noun} as its first parameter, e.g. {example}"
                ),
            );
            None
        }
        Some(FnArg::Receiver(r)) => {
            cx.error(r, "`self` can only be the first parameter");
            None
        }
        Some(FnArg::Typed(t)) => match &*t.ty {
            Type::Reference(r) if r.mutability.is_some() => {
                cx.error(
                    r,
                    format_args!(
                        "a {noun} handler takes the {noun} by value or by shared reference (`&`), not `&mut`"
                    ),
                );
                None
            }
            Type::Reference(r) => {
                check_reference(r, cx);
                Some(MessageParam::ByRef((*r.elem).clone()))
            }
            Type::ImplTrait(i) => {
                cx.error(
                    i,
                    format_args!("the {noun} must be a concrete type, not `impl Trait`"),
                );
                None
            }
            ty => Some(MessageParam::ByValue(ty.clone())),
        },
    };

    let mut params = Vec::new();
    let mut uow: Option<&Type> = None;
    for input in inputs {
        match input {
            FnArg::Receiver(r) => cx.error(r, "`self` can only be the first parameter"),
            FnArg::Typed(t) => match &*t.ty {
                Type::Reference(r) => {
                    check_reference(r, cx);
                    let elem = (*r.elem).clone();
                    if r.mutability.is_some() {
                        if let Some(first) = uow {
                            cx.error(
                                &t.ty,
                                format_args!(
                                    "a handler takes at most one unit of work (`&mut`), and it already takes `{}`: put what you need in that one",
                                    type_to_string(first)
                                ),
                            );
                        } else {
                            uow = Some(&*t.ty);
                            params.push(Param::UnitOfWork(elem));
                        }
                    } else {
                        params.push(Param::Dependency(elem));
                    }
                }
                other => cx.error(
                    other,
                    format_args!(
                        "a handler cannot take `{0}` by value: the parameters after the {noun} are lent by the bus, as `&Adapter`, `&Metadata`, `&MessageBus` or `&mut UnitOfWork`",
                        type_to_string(other)
                    ),
                ),
            },
        }
    }

    let output = match &sig.output {
        ReturnType::Default => {
            if kind == Kind::Command {
                cx.error(
                    &sig.ident,
                    "a command handler returns `Result<Output, E>` (the output declared by `#[command(output = …)]`)",
                );
            }
            None
        }
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(i) = &**ty {
                cx.error(i, "a handler returns a concrete type, not `impl Trait`");
            }
            Some((**ty).clone())
        }
    };

    Some(Signature {
        name: sig.ident.clone(),
        message: message?,
        params,
        output,
    })
}

/// A type as a user would write it: `&mut ShopUow`, `Result<(), E>`.
pub(crate) fn type_to_string(ty: &Type) -> String {
    let raw = quote!(#ty).to_string();
    let mut out = String::with_capacity(raw.len());
    let tokens: Vec<&str> = raw.split(' ').collect();
    for (i, token) in tokens.iter().enumerate() {
        let prev = if i == 0 { None } else { Some(tokens[i - 1]) };
        let space = !matches!(
            (prev, *token),
            (None, _)
                | (_, "::" | "<" | ">" | "," | ")" | "]" | ";")
                | (Some("::" | "<" | "&" | "(" | "[" | "'"), _)
        );
        if space {
            out.push(' ');
        }
        out.push_str(token);
    }
    out
}

/// `a::b::Allocate` → `a__b__Allocate`, for the same-module duplicate check.
fn mangle(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => Some(
            p.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("__"),
        ),
        _ => None,
    }
}

/// The span of `E` in a return type `Result<T, E>`, where the error
/// conversion is checked; the whole return type otherwise.
fn error_span(output: &Type) -> Span {
    if let Type::Path(p) = output
        && let Some(last) = p.path.segments.last()
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && args.args.len() == 2
    {
        return args.args[1].span();
    }
    output.span()
}

/// The handler's options: `id = "…"`, its stable identity.
fn parse_args(args: TokenStream, kind: Kind, cx: &mut Ctxt) -> Option<LitStr> {
    let mut id: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            let value: LitStr = meta.value()?.parse()?;
            let text = value.value();
            if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(syn::Error::new_spanned(
                    &value,
                    "a handler id is a non-empty string without spaces, e.g. \"allocation::reallocate\"",
                ));
            }
            if text.len() > 200 {
                return Err(syn::Error::new_spanned(
                    &value,
                    format!(
                        "a handler id is at most 200 bytes (it is stored in the inbox); this one has {}",
                        text.len()
                    ),
                ));
            }
            if id.is_some() {
                return Err(meta.error("`id` is given twice"));
            }
            id = Some(value);
            Ok(())
        } else {
            Err(meta.error(format_args!(
                "unknown `#[{}_handler]` option: expected `id = \"…\"` (the handler's stable identity in the inbox)",
                what(kind)
            )))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.push(e);
    }
    id
}

/// The most parameters a handler takes after its message (eda-core has a
/// generic function per arity up to this many).
const MAX_PARAMS: usize = 6;

pub(crate) fn expand(args: TokenStream, item: ItemFn, kind: Kind) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let id = parse_args(args, kind, &mut cx);
    let sig = parse(&item, kind, &mut cx);
    if let Some(sig) = &sig
        && sig.params.len() > MAX_PARAMS
    {
        let extra = item
            .sig
            .inputs
            .iter()
            .filter(|a| matches!(a, FnArg::Typed(_)))
            .nth(MAX_PARAMS + 1);
        let message = format!(
            "a handler takes at most {MAX_PARAMS} parameters after the {}: group what it needs in a unit of work (`#[derive(UnitOfWork)]`, whose fields can be adapters)",
            what(kind)
        );
        match extra {
            Some(extra) => cx.error(extra, message),
            None => cx.error(&sig.name, message),
        }
    }
    cx.check()?;
    let sig = sig.expect("no error means a parsed signature");

    let p = quote!(::eda_core::__private);
    let name = &sig.name;
    let name_str = name.to_string();
    let span = name.span();
    let msg_ty = sig.message.ty();
    let msg_span = msg_ty.span();

    // Every type the user wrote is named in the generated code with the
    // span of their tokens, and each bound eda asks of it is checked where
    // it is named (a generic argument of a `const fn` in eda-core): rustc
    // then reports an unsatisfied bound once, at the user's tokens. The
    // generic function that ties them together needs nothing that a
    // mistake could break a second time.
    let msg_ty = respan(msg_ty.to_token_stream(), msg_span);
    let (message, message_kind) = match &sig.message {
        MessageParam::ByRef(_) => (
            quote_spanned!(msg_span=> #p::by_ref::<#msg_ty>()),
            quote_spanned!(msg_span=> #p::ByRef<#msg_ty>),
        ),
        MessageParam::ByValue(_) => (
            quote_spanned!(msg_span=> #p::by_value::<#msg_ty>()),
            quote_spanned!(msg_span=> #p::ByValue<#msg_ty>),
        ),
    };
    let (params, param_kinds): (Vec<TokenStream>, Vec<TokenStream>) = sig
        .params
        .iter()
        .map(|param| match param {
            Param::UnitOfWork(ty) => {
                let ty_span = ty.span();
                let ty = respan(ty.to_token_stream(), ty_span);
                (
                    quote_spanned!(ty_span=> #p::uow::<#ty, _>()),
                    quote_spanned!(ty_span=> #p::Uow<#ty, _>),
                )
            }
            Param::Dependency(ty) => {
                let ty_span = ty.span();
                let ty = respan(ty.to_token_stream(), ty_span);
                (
                    quote_spanned!(ty_span=> #p::dep::<#ty>()),
                    quote_spanned!(ty_span=> #p::Dep<#ty>),
                )
            }
        })
        .unzip();
    // Named, not inferred: with every kind known, rustc finds the one
    // implementation for this arity and reports what the handler's future
    // lacks (`Send`) at the await that holds it.
    let inferred = quote!(#message_kind, (#(#param_kinds,)*));

    // In generated code the return type's tokens all carry one span (its
    // first token's, which is what `span()` gives on stable), so that every
    // obligation about it has the same span and is reported once.
    let output_span = sig.output.as_ref().map(|t| t.span()).unwrap_or(span);
    let output_ty = sig
        .output
        .as_ref()
        .map(|t| respan(t.to_token_stream(), output_span))
        .unwrap_or_else(|| quote!(()));
    let file = quote_spanned!(span=> ::core::file!());
    let line = quote_spanned!(span=> ::core::line!());
    // The handler's identity in the inbox: stable across moves between
    // modules (unlike `module_path!()`), and across renames when given.
    let handler_id = match &id {
        Some(id) => quote!(#id),
        None => quote!(::core::concat!(::core::env!("CARGO_CRATE_NAME"), "::", #name_str)),
    };
    // The handler function itself, whose future must be `Send`: checked on
    // the function at its name, so that the error says "future returned by
    // `name` is not `Send`" and points at the `.await` that holds the
    // culprit.
    let handler_ty = quote_spanned!(span=> _);

    let (constructor, registration) = match kind {
        Kind::Command => {
            let ctor = Ident::new("command_handler", span);
            let error_span = sig.output.as_ref().map(error_span).unwrap_or(span);
            let output = quote_spanned!(msg_span=> <#msg_ty as #p::CommandTrait>::Output);
            let error = quote_spanned!(msg_span=> <#msg_ty as #p::CommandTrait>::Error);
            // The handler's error type, inferred; a bound on it is reported
            // at the `E` of its `Result<T, E>`.
            let handler_error = quote_spanned!(error_span=> _);
            (
                quote! {
                    #p::#ctor::<#msg_ty, #output, #error, #output_ty, #handler_error, #inferred, #handler_ty>
                },
                quote_spanned!(msg_span=> #p::CommandHandlerRegistration::new::<#msg_ty>),
            )
        }
        Kind::Event => {
            let ctor = Ident::new("event_handler", span);
            (
                quote! {
                    #p::#ctor::<#msg_ty, #output_ty, #inferred, #handler_ty>
                },
                quote_spanned!(msg_span=> #p::EventHandlerRegistration::new::<#msg_ty>),
            )
        }
    };
    let handler_fn = quote_spanned! {span=>
        &const { #constructor(#name, #message, (#(#params,)*)) }
    };

    let duplicate_guard = match kind {
        // Two handlers of one command in one module: the compiler says the
        // name below "is defined multiple times", at the second handler's
        // command type. (`build()` catches two handlers anywhere.)
        Kind::Command => mangle(sig.message.ty()).map(|m| {
            let guard = Ident::new(&format!("only_one_command_handler_for_{m}"), msg_span);
            quote_spanned! {msg_span=>
                #[doc(hidden)]
                #[allow(non_camel_case_types, dead_code)]
                enum #guard {}
            }
        }),
        Kind::Event => None,
    };

    Ok(quote! {
        #item

        #duplicate_guard

        #[allow(non_snake_case, unused_variables, clippy::all)]
        const _: () = {
            #p::inventory::submit! {
                #registration(
                    #name_str,
                    #handler_id,
                    ::core::module_path!(),
                    #file,
                    #line,
                    #handler_fn,
                )
            }
        };
    })
}

#[cfg(test)]
mod tests {
    use super::{mangle, type_to_string};

    fn ty(s: &str) -> syn::Type {
        syn::parse_str(s).unwrap()
    }

    #[test]
    fn types_print_as_written() {
        assert_eq!(type_to_string(&ty("&mut ShopUow")), "&mut ShopUow");
        assert_eq!(type_to_string(&ty("& 'a Foo")), "&'a Foo");
        assert_eq!(
            type_to_string(&ty("Result<Option<String>, my::Error>")),
            "Result<Option<String>, my::Error>"
        );
        assert_eq!(type_to_string(&ty("(u32, [u8; 4])")), "(u32, [u8; 4])");
        assert_eq!(type_to_string(&ty("String")), "String");
    }

    #[test]
    fn mangles_paths_for_the_duplicate_guard() {
        assert_eq!(mangle(&ty("Allocate")).as_deref(), Some("Allocate"));
        assert_eq!(
            mangle(&ty("crate::domain::Allocate")).as_deref(),
            Some("crate__domain__Allocate")
        );
        assert_eq!(mangle(&ty("&Allocate")), None);
    }
}
