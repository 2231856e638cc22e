//! `#[derive(ProcessState)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr, Type};

use crate::ctxt::Ctxt;
use crate::message::parse_name;

struct Attrs {
    name: Option<LitStr>,
    key: Option<Type>,
    missing: Option<(LitStr, bool)>,
}

fn parse_attrs(input: &DeriveInput, cx: &mut Ctxt) -> Attrs {
    let mut attrs = Attrs {
        name: None,
        key: None,
        missing: None,
    };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("process")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                attrs.name = Some(parse_name(&meta, "process", "orders.fulfilment")?);
            } else if meta.path.is_ident("key") {
                attrs.key = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("missing") {
                let missing: LitStr = meta.value()?.parse()?;
                let error = match missing.value().as_str() {
                    "ignore" => false,
                    "error" => true,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            &missing,
                            "`missing` is \"ignore\" (a message for a process that is not running is logged and ignored) or \"error\" (the handler fails)",
                        ));
                    }
                };
                attrs.missing = Some((missing, error));
            } else {
                return Err(meta.error(
                    "unknown process option: expected `name = \"…\"`, `key = Type` or `missing = \"ignore\" | \"error\"`",
                ));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
    }
    attrs
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let attrs = parse_attrs(&input, &mut cx);
    if !input.generics.params.is_empty() {
        cx.error(
            &input.generics,
            "a process state cannot be generic: it is stored by name, as one concrete type",
        );
    }
    if attrs.name.is_none() {
        cx.error(
            &input.ident,
            "a process state needs a name: `#[process(name = \"service.process\", key = KeyType)]` (it is where its states are stored)",
        );
    }
    cx.check()?;

    let ident = &input.ident;
    let name = attrs.name.expect("checked above");
    let p = quote!(::eda_core::__private);
    let key = match &attrs.key {
        Some(key) => quote!(#key),
        None => quote!(::std::string::String),
    };
    let key_span = attrs.key.as_ref().map_or(ident.span(), |k| k.span());
    let missing = match attrs.missing {
        Some((lit, true)) => quote_spanned!(lit.span()=> #p::OnMissing::Error),
        _ => quote!(#p::OnMissing::Ignore),
    };
    // Each bound checked at the user's tokens: the key at its type, the
    // state at its name.
    let key_check = quote_spanned! {key_span=>
        const _: fn() = || {
            fn key<K: #p::ProcessKey>() {}
            key::<#key>();
        };
    };
    Ok(quote! {
        #key_check

        impl #p::ProcessStateTrait for #ident {
            type Key = #key;
            const NAME: &'static str = #name;
            const ON_MISSING: #p::OnMissing = #missing;
        }
    })
}
