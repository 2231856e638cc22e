//! `#[derive(Command)]` and `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{DeriveInput, LitStr, Type};

use crate::ctxt::Ctxt;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Event => "event",
        }
    }
}

struct Attrs {
    name: Option<LitStr>,
    output: Option<Type>,
    error: Option<Type>,
    external: bool,
    /// `key = field`: the ordering key.
    key: Option<syn::Ident>,
}

fn parse_attrs(input: &DeriveInput, kind: Kind, cx: &mut Ctxt) -> Attrs {
    let mut attrs = Attrs {
        name: None,
        output: None,
        error: None,
        external: false,
        key: None,
    };
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(kind.attr()))
    {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let name = parse_name(&meta, "message", "allocation.allocated")?;
                let value = name.value();
                // The name is the AMQP routing key and `type` property: short
                // strings, of at most 255 bytes.
                if value.len() > 255 {
                    return Err(syn::Error::new_spanned(
                        &name,
                        format!(
                            "a message name is at most 255 bytes (it is the RabbitMQ routing key); this one has {}",
                            value.len()
                        ),
                    ));
                }
                attrs.name = Some(name);
            } else if kind == Kind::Command && meta.path.is_ident("output") {
                attrs.output = Some(meta.value()?.parse()?);
            } else if kind == Kind::Command && meta.path.is_ident("error") {
                attrs.error = Some(meta.value()?.parse()?);
            } else if kind == Kind::Event && meta.path.is_ident("external") {
                attrs.external = true;
            } else if meta.path.is_ident("key") {
                let value = meta.value()?;
                attrs.key = Some(value.parse().map_err(|e: syn::Error| {
                    syn::Error::new(
                        e.span(),
                        "expected the name of the field that is the ordering key, e.g. `key = sku`",
                    )
                })?);
            } else {
                let expected = match kind {
                    Kind::Command => {
                        "`name = \"…\"`, `output = Type`, `error = Type` or `key = field`"
                    }
                    Kind::Event => "`name = \"…\"`, `external` or `key = field`",
                };
                return Err(meta.error(format_args!(
                    "unknown {} option: expected {expected}",
                    kind.attr()
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
    }
    attrs
}

/// The value of `name = "…"`: a non-empty string without spaces or
/// control characters (an error at it otherwise, naming `what` it names and
/// an `example`).
pub(crate) fn parse_name(
    meta: &syn::meta::ParseNestedMeta<'_>,
    what: &str,
    example: &str,
) -> syn::Result<LitStr> {
    let name: LitStr = meta.value()?.parse()?;
    let value = name.value();
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new_spanned(
            &name,
            format!("a {what} name is a non-empty string without spaces, e.g. \"{example}\""),
        ));
    }
    Ok(name)
}

/// `ChangeBatchQuantity` → `change_batch_quantity`.
pub(crate) fn snake_case(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 4);
    let chars: Vec<char> = ident.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

pub(crate) fn expand(input: DeriveInput, kind: Kind) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let attrs = parse_attrs(&input, kind, &mut cx);
    if !input.generics.params.is_empty() {
        cx.error(
            &input.generics,
            format_args!(
                "a {} cannot be generic: it is registered, and decoded by name, as one concrete type",
                kind.attr()
            ),
        );
    }
    cx.check()?;

    let ident = &input.ident;
    let type_name = ident.to_string();
    let name = match &attrs.name {
        Some(name) => quote!(#name),
        None => {
            let snake = snake_case(&type_name);
            quote!(::core::concat!(::core::env!("CARGO_CRATE_NAME"), ".", #snake))
        }
    };
    let p = quote!(::eda_core::__private);
    let span = ident.span();

    let external = match kind {
        Kind::Command => quote!(false),
        Kind::Event => quote!(<#ident as #p::EventTrait>::EXTERNAL),
    };
    let (kind_impl, kind_variant, dispatch) = match kind {
        Kind::Command => {
            let output = attrs
                .output
                .map(|t| quote!(#t))
                .unwrap_or_else(|| quote!(()));
            let error = attrs
                .error
                .map(|t| quote!(#t))
                .unwrap_or_else(|| quote!(#p::DefaultError));
            (
                quote! {
                    impl #p::CommandTrait for #ident {
                        type Output = #output;
                        type Error = #error;
                    }
                },
                quote!(Command),
                quote!(#p::dispatch_command::<#ident>),
            )
        }
        Kind::Event => {
            let external = attrs.external;
            (
                quote! {
                    impl #p::EventTrait for #ident {
                        const EXTERNAL: bool = #external;
                    }
                },
                quote!(Event),
                quote!(#p::dispatch_event::<#ident>),
            )
        }
    };
    let line = quote_spanned!(span=> ::core::line!());
    let file = quote_spanned!(span=> ::core::file!());

    // Spanned at the field's name: no such field, or one that is not
    // `Display`, is an error there.
    let ordering = attrs.key.as_ref().map(|field| {
        quote_spanned! {field.span()=>
            const ORDERED: bool = true;
            fn ordering_key(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#field))
            }
        }
    });
    Ok(quote! {
        impl #p::Message for #ident {
            const NAME: &'static str = #name;
            #ordering
        }
        #kind_impl
        const _: () = {
            #p::inventory::submit! {
                #p::MessageRegistration::new::<#ident>(
                    #p::MessageKind::#kind_variant,
                    #external,
                    #type_name,
                    ::core::module_path!(),
                    #file,
                    #line,
                    #dispatch,
                )
            }
        };
    })
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_cases_type_names() {
        assert_eq!(snake_case("ChangeBatchQuantity"), "change_batch_quantity");
        assert_eq!(snake_case("Allocate"), "allocate");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("Sku2Changed"), "sku2_changed");
    }
}
