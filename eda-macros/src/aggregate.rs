//! `#[derive(Aggregate)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, LitStr, Type};

use crate::ctxt::Ctxt;

#[derive(Default)]
struct FieldRoles<'a> {
    id: Option<&'a Field>,
    version: Option<&'a Field>,
    events: Option<&'a Field>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let mut name: Option<LitStr> = None;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("aggregate"))
    {
        if let Err(e) = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse()?);
                Ok(())
            } else {
                Err(meta.error("unknown aggregate option: expected `name = \"…\"`"))
            }
        }) {
            cx.push(e);
        }
    }
    if !input.generics.params.is_empty() {
        cx.error(&input.generics, "an aggregate cannot be generic");
    }
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(&named.named),
            _ => None,
        },
        _ => None,
    };
    let Some(fields) = fields else {
        cx.error(
            &input.ident,
            "an aggregate is a struct with named fields (an `#[aggregate(id)]` field, a version and events)",
        );
        return cx.check().map(|()| TokenStream::new());
    };

    let mut roles = FieldRoles::default();
    for field in fields {
        for attr in field
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("aggregate"))
        {
            if let Err(e) = attr.parse_nested_meta(|meta| {
                let slot = if meta.path.is_ident("id") {
                    &mut roles.id
                } else if meta.path.is_ident("version") {
                    &mut roles.version
                } else if meta.path.is_ident("events") {
                    &mut roles.events
                } else {
                    return Err(meta.error(
                        "unknown aggregate field option: expected `id`, `version` or `events`",
                    ));
                };
                if slot.is_some() {
                    return Err(meta.error("only one field can have this role"));
                }
                *slot = Some(field);
                Ok(())
            }) {
                cx.push(e);
            }
        }
    }
    let by_name = |n: &str| {
        fields
            .iter()
            .find(|f| f.ident.as_ref().is_some_and(|i| i == n))
    };
    let version = roles.version.or_else(|| by_name("version"));
    let events = roles.events.or_else(|| by_name("events"));
    if roles.id.is_none() {
        cx.error(
            &input.ident,
            "mark the aggregate's id field with `#[aggregate(id)]`",
        );
    }
    if version.is_none() {
        cx.error(
            &input.ident,
            "an aggregate needs a `version: u64` field (or one marked `#[aggregate(version)]`)",
        );
    }
    if events.is_none() {
        cx.error(
            &input.ident,
            "an aggregate needs an `events: eda_core::Events` field (or one marked `#[aggregate(events)]`)",
        );
    }
    // A version of another integer type would fail twice (in `version` and
    // `set_version`); say it once, here.
    const INTEGERS: [&str; 11] = [
        "u8", "u16", "u32", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    ];
    if let Some(Type::Path(p)) = version.map(|v| &v.ty)
        && let Some(ident) = p.path.get_ident()
        && INTEGERS.iter().any(|i| ident == i)
    {
        cx.error(
            ident,
            "an aggregate's version is a `u64` (the unit of work compares and increments it)",
        );
    }
    cx.check()?;
    let (id, version, events) = (roles.id.unwrap(), version.unwrap(), events.unwrap());

    let ident = &input.ident;
    let name = name.map(|n| n.value()).unwrap_or_else(|| ident.to_string());
    let p = quote!(::eda_core::__private);
    let id_ty = &id.ty;
    let id_ident = &id.ident;
    let version_ident = &version.ident;
    let events_ident = &events.ident;
    let version_get = quote_spanned!(version.ty.span()=> { let v: u64 = self.#version_ident; v });
    let version_set = quote_spanned!(version.ty.span()=> self.#version_ident = version;);
    let events_ty = quote_spanned!(events.ty.span()=> #p::Events);

    Ok(quote! {
        impl #p::Aggregate for #ident {
            type Id = #id_ty;
            const NAME: &'static str = #name;
            fn id(&self) -> &Self::Id {
                &self.#id_ident
            }
            fn version(&self) -> u64 {
                #version_get
            }
            fn set_version(&mut self, version: u64) {
                #version_set
            }
            fn events(&self) -> &#events_ty {
                &self.#events_ident
            }
            fn events_mut(&mut self) -> &mut #events_ty {
                &mut self.#events_ident
            }
            fn __codec() -> ::core::option::Option<#p::Codec<Self>> {
                #[allow(unused_imports)]
                use #p::{ViaSerde as _, WithoutSerde as _};
                (&#p::Probe::<Self>::new()).__codec()
            }
        }
    })
}
