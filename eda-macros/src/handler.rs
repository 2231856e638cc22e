//! `#[command_handler]` and `#[event_handler]`: check the signature, then
//! generate the type-erased call and its registration.
//!
//! Parse → check → expand. Signature mistakes are reported here, at the
//! user's tokens; what only the type checker can tell (is this a command, a
//! unit of work, an adapter, is the future `Send`) is asked of it through
//! bounds placed at the span of the user's tokens, so that its error lands
//! there too.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, ReturnType, Type, TypeReference};

use crate::ctxt::Ctxt;
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

    let mut inputs = sig.inputs.iter();
    let message = match inputs.next() {
        None => {
            cx.error(
                &sig.ident,
                format_args!(
                    "a {noun} handler takes the {noun} as its first parameter, e.g. `(cmd: Allocate, …)` or `(event: &Allocated, …)`"
                ),
            );
            None
        }
        Some(FnArg::Receiver(r)) => {
            cx.error(
                r,
                format_args!(
                    "a {noun} handler is a free function, not a method: remove `self` and move it out of the `impl` block"
                ),
            );
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
                                    "a handler takes at most one unit of work (`&mut`), and it already takes `{}`",
                                    quote!(#first).to_string().replace(' ', "")
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
                        "parameters after the {noun} are lent by the bus: take an adapter as `&{0}` or a unit of work as `&mut {0}`",
                        quote!(#other).to_string().replace(' ', "")
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

pub(crate) fn expand(args: TokenStream, item: ItemFn, kind: Kind) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    if !args.is_empty() {
        cx.error(
            &args,
            format_args!("`#[{}_handler]` takes no arguments", what(kind)),
        );
    }
    let sig = parse(&item, kind, &mut cx);
    cx.check()?;
    let sig = sig.expect("no error means a parsed signature");

    let p = quote!(::eda_core::__private);
    let name = &sig.name;
    let name_str = name.to_string();
    let span = name.span();
    let msg_ty = sig.message.ty();
    let msg_span = msg_ty.span();

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
    let mut uow_ty = None;
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
                let begin = quote_spanned!(ty.span()=> #p::begin::<#ty>);
                resolve.push(quote! {
                    let mut #var = match #begin(&__ctx, __inbox_key).await {
                        ::core::result::Result::Ok(::core::option::Option::Some(u)) => u,
                        ::core::result::Result::Ok(::core::option::Option::None) => return #duplicate,
                        ::core::result::Result::Err(e) => return #failed,
                    };
                });
                call_args.push(quote!(&mut #var));
                requirements
                    .push(quote_spanned!(ty.span()=> <#ty as #p::UnitOfWorkTrait>::__require(r);));
                uow_ty = Some(var);
            }
            Param::Dependency(ty) => {
                let resolve_fn = quote_spanned!(ty.span()=> <#ty as #p::Dependency>::__resolve);
                resolve.push(quote! {
                    let #var = match #resolve_fn(&__ctx) {
                        ::core::result::Result::Ok(d) => d,
                        ::core::result::Result::Err(e) => return #failed,
                    };
                });
                call_args.push(quote!(#var));
                requirements
                    .push(quote_spanned!(ty.span()=> <#ty as #p::Dependency>::__require(r);));
            }
        }
    }

    let output_ty = sig
        .output
        .as_ref()
        .map(|t| quote!(#t))
        .unwrap_or_else(|| quote!(()));
    let output_span = sig.output.as_ref().map(|t| t.span()).unwrap_or(span);
    let file = quote_spanned!(span=> ::core::file!());
    let line = quote_spanned!(span=> ::core::line!());
    let send = quote_spanned!(span=> #p::send);
    let inbox_key = quote!(::core::concat!(::core::module_path!(), "::", #name_str));

    let (call, registration, duplicate_guard) = match kind {
        Kind::Command => {
            let parts = quote_spanned!(msg_span=> __call.into_parts::<#msg_ty>());
            let write = quote_spanned! {output_span=>
                <#output_ty as #p::CommandHandlerResult<#msg_ty>>::write(__result, __out)
            };
            let finish = match &uow_ty {
                Some(uow) => quote!(#p::finish_command_uow(__failed, &mut #uow, __events)),
                None => quote! {{ let _ = __events; #p::finish_command(__failed) }},
            };
            let call = quote! {
                fn __eda_call<'a>(
                    __call: #p::CommandCall<'a>,
                ) -> #p::BoxFuture<'a, #p::CallOutcome> {
                    let (__ctx, __message, __out, __events) = #parts;
                    let __inbox_key: &'static str = #inbox_key;
                    #send(async move {
                        #(#resolve)*
                        let __result: #output_ty = #name(#(#call_args),*).await;
                        let __failed = #write;
                        #finish
                    })
                }
            };
            let registration = quote_spanned! {msg_span=>
                #p::CommandHandlerRegistration::new::<#msg_ty>(
                    #name_str, ::core::module_path!(), #file, #line, __eda_call, __eda_requirements,
                )
            };
            // Two handlers of one command in one module: a compile error at
            // the second one's command type.
            let guard = mangle(msg_ty).map(|m| {
                let guard = Ident::new(&format!("__eda_command_handler_for_{m}"), msg_span);
                quote! {
                    #[doc(hidden)]
                    #[allow(non_camel_case_types, dead_code)]
                    enum #guard {}
                }
            });
            (call, registration, guard)
        }
        Kind::Event => {
            let parts = quote_spanned!(msg_span=> __call.into_parts::<#msg_ty>());
            let into_error = quote_spanned! {output_span=>
                <#output_ty as #p::EventHandlerResult>::into_error(__result)
            };
            let finish = match &uow_ty {
                Some(uow) => quote!(#p::finish_event_uow(__error, &mut #uow, __events)),
                None => quote! {{ let _ = __events; #p::finish_event(__error) }},
            };
            let message_arg = match &sig.message {
                MessageParam::ByRef(_) => quote!(__message),
                MessageParam::ByValue(ty) => {
                    quote_spanned!(ty.span()=> <#ty as #p::ByValue>::take(__message))
                }
            };
            call_args[0] = message_arg;
            let call = quote! {
                fn __eda_call<'a>(
                    __call: #p::EventCall<'a>,
                ) -> #p::BoxFuture<'a, #p::EventOutcome> {
                    let (__ctx, __message, __events, _) = #parts;
                    let __inbox_key: &'static str = #inbox_key;
                    #send(async move {
                        #(#resolve)*
                        let __result: #output_ty = #name(#(#call_args),*).await;
                        let __error = #into_error;
                        #finish
                    })
                }
            };
            let registration = quote_spanned! {msg_span=>
                #p::EventHandlerRegistration::new::<#msg_ty>(
                    #name_str, ::core::module_path!(), #file, #line, __eda_call, __eda_requirements,
                )
            };
            (call, registration, None)
        }
    };
    Ok(quote! {
        #item

        #duplicate_guard

        #[allow(non_snake_case, unused_variables, clippy::all)]
        const _: () = {
            #call

            fn __eda_requirements(r: &mut #p::Requirements) {
                #(#requirements)*
            }

            #p::inventory::submit! { #registration }
        };
    })
}
