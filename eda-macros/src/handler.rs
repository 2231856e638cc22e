//! `#[command_handler]` and `#[event_handler]`: check the signature, then
//! generate the type-erased call and its registration.
//!
//! Parse → check → expand. Signature mistakes are reported here, at the
//! user's tokens; what only the type checker can tell (is this a command, a
//! unit of work, an adapter, is the future `Send`) is asked of it through
//! bounds placed at the span of the user's tokens, so that its error lands
//! there too.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
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

pub(crate) fn expand(args: TokenStream, item: ItemFn, kind: Kind) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let id = parse_args(args, kind, &mut cx);
    let sig = parse(&item, kind, &mut cx);
    cx.check()?;
    let sig = sig.expect("no error means a parsed signature");

    let p = quote!(::eda_core::__private);
    let name = &sig.name;
    let name_str = name.to_string();
    let span = name.span();
    let msg_ty = sig.message.ty();
    let msg_span = msg_ty.span();

    // Every mention of a type the user wrote carries the span of their
    // tokens, and all the generated code is type-checked as one body (the
    // call and the requirements are closures in the registration): rustc
    // then reports an unsatisfied bound once per type, at the user's tokens.
    // Each type's first mention is a plain trait path, whose error carries no
    // note pointing into eda-core.
    let mut checks = Vec::new();
    checks.push(match kind {
        Kind::Command => quote_spanned! {msg_span=>
            let _ = ::core::marker::PhantomData::<<#msg_ty as #p::CommandTrait>::Output>;
        },
        Kind::Event => quote_spanned! {msg_span=>
            let _ = <#msg_ty as #p::EventTrait>::EXTERNAL;
        },
    });

    // The message argument: by reference as lent, by value cloned for each
    // run (so that a conflict can run the handler again).
    let message_arg = match &sig.message {
        MessageParam::ByRef(_) => quote!(__message),
        MessageParam::ByValue(ty) => {
            quote_spanned!(ty.span()=> <#ty as #p::ByValue>::take(__message))
        }
    };

    let mut resolve = Vec::new();
    let mut call_args = vec![message_arg];
    let mut requirements = Vec::new();
    let mut uow_var = None;
    let failed = match kind {
        Kind::Command => quote!(#p::CallOutcome::Failed(e)),
        Kind::Event => quote!(#p::EventOutcome::framework(e)),
    };
    let duplicate = match kind {
        Kind::Command => quote!(#p::CallOutcome::Duplicate),
        Kind::Event => quote!(#p::EventOutcome::Done),
    };
    for (i, param) in sig.params.iter().enumerate() {
        let var = format_ident!("__param{}", i + 1);
        match param {
            Param::UnitOfWork(ty) => {
                let ty_span = ty.span();
                checks.push(quote_spanned! {ty_span=>
                    let _ = <#ty as #p::UnitOfWorkTrait>::__require;
                });
                let record_inbox = quote_spanned! {ty_span=>
                    #p::record_inbox(
                        <#ty as #p::UnitOfWorkTrait>::__transaction(&mut #var),
                        &__ctx,
                    ).await
                };
                let begin = quote_spanned! {ty_span=>
                    <#ty as #p::UnitOfWorkTrait>::__begin(&__ctx).await
                };
                resolve.push(quote! {
                    let mut #var = match #begin {
                        ::core::result::Result::Ok(u) => u,
                        ::core::result::Result::Err(e) => return #failed,
                    };
                    match #record_inbox {
                        ::core::result::Result::Ok(true) => {}
                        ::core::result::Result::Ok(false) => return #duplicate,
                        ::core::result::Result::Err(e) => return #failed,
                    }
                });
                call_args.push(quote!(&mut #var));
                requirements
                    .push(quote_spanned!(ty_span=> <#ty as #p::UnitOfWorkTrait>::__require(r);));
                uow_var = Some((var, ty_span));
            }
            Param::Dependency(ty) => {
                let ty_span = ty.span();
                checks.push(quote_spanned! {ty_span=>
                    let _ = <#ty as #p::Dependency>::__require;
                });
                let resolve_fn = quote_spanned!(ty_span=> <#ty as #p::Dependency>::__resolve);
                // The slot's type is a projection on the user's type: the
                // binding carries their span, so that an unsatisfied bound
                // is reported there, once.
                resolve.push(quote_spanned! {ty_span=>
                    let #var = match #resolve_fn(&__ctx) {
                        ::core::result::Result::Ok(d) => d,
                        ::core::result::Result::Err(e) => return #failed,
                    };
                });
                let get = quote_spanned!(ty_span=> <#ty as #p::Dependency>::__get(&#var));
                call_args.push(get);
                requirements.push(quote_spanned!(ty_span=> <#ty as #p::Dependency>::__require(r);));
            }
        }
    }

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

    // The handler's own future must be `Send`: checked on it, at the
    // handler's name, so that the error says "future returned by `name` is
    // not `Send`" and points at the `.await` in the handler that holds the
    // culprit. (rustc then does not report the enclosing future again.)
    let call = quote_spanned! {span=>
        let __future = {
            let __future = #name(#(#call_args),*);
            let _: &dyn ::core::marker::Send = &__future;
            __future
        };
    };

    let (parts, finish_result, outcome, call_fn, registration) = match kind {
        Kind::Command => {
            let split = quote_spanned! {output_span=>
                <#output_ty as #p::CommandHandlerResult<#msg_ty, <#msg_ty as #p::CommandTrait>::Output>>
            };
            let split_call = quote_spanned!(output_span=> #split::split(__result));
            let error_span = sig.output.as_ref().map(error_span).unwrap_or(span);
            let convert = quote_spanned! {error_span=>
                <_ as #p::CommandHandlerError<#msg_ty, <#msg_ty as #p::CommandTrait>::Error>>::into_command_error
            };
            let write = quote_spanned! {msg_span=>
                let __failed = #p::write_command_result::<#msg_ty>(__result, __out);
            };
            let finish = match &uow_var {
                Some((uow, uow_span)) => respan(
                    quote!(#p::finish_command_uow(__failed, &mut #uow, __events, &__ctx)),
                    *uow_span,
                ),
                None => quote! {{ let _ = (__events, __failed); #p::finish_command() }},
            };
            (
                quote_spanned!(msg_span=> let (__ctx, __message, __out, __events) = __call.into_parts::<#msg_ty>();),
                quote! {
                    let __result = match #split_call {
                        ::core::result::Result::Ok(v) => ::core::result::Result::Ok(v),
                        ::core::result::Result::Err(e) => ::core::result::Result::Err(#convert(e)),
                    };
                    #write
                    #finish
                },
                quote!(#p::CallOutcome),
                quote!(#p::CommandCall),
                quote_spanned!(msg_span=> #p::CommandHandlerRegistration::new::<#msg_ty>),
            )
        }
        Kind::Event => {
            let into_error = quote_spanned! {output_span=>
                <#output_ty as #p::EventHandlerResult>::into_error(__result)
            };
            let finish = match &uow_var {
                Some((uow, uow_span)) => respan(
                    quote!(#p::finish_event_uow(__error, &mut #uow, __events, &__ctx)),
                    *uow_span,
                ),
                None => quote! {{ let _ = __events; #p::finish_event(__error) }},
            };
            (
                quote_spanned!(msg_span=> let (__ctx, __message, __events) = __call.into_parts::<#msg_ty>();),
                quote! {
                    let __error = #into_error;
                    #finish
                },
                quote!(#p::EventOutcome),
                quote!(#p::EventCall),
                quote_spanned!(msg_span=> #p::EventHandlerRegistration::new::<#msg_ty>),
            )
        }
    };

    // The block's witness types mention the message type; an error about
    // them is the one already reported at the message parameter.
    let async_block = quote_spanned!(msg_span=> async move);

    let duplicate_guard = match kind {
        // Two handlers of one command in one module: the compiler says the
        // name below "is defined multiple times", at the second handler's
        // command type. (`build()` catches two handlers anywhere.)
        Kind::Command => mangle(msg_ty).map(|m| {
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
            #p::inventory::submit! {{
                #(#checks)*
                #registration(
                    #name_str,
                    #handler_id,
                    ::core::module_path!(),
                    #file,
                    #line,
                    |__call: #call_fn<'_>| -> #p::BoxFuture<'_, #outcome> {
                        #parts
                        #p::send(#async_block {
                            #(#resolve)*
                            #call
                            let __result: #output_ty = __future.await;
                            #finish_result
                        })
                    },
                    |r: &mut #p::Requirements| {
                        #(#requirements)*
                    },
                )
            }}
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
