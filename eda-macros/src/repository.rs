//! `#[repository]`: registers an `impl Repository for …` (or an
//! `impl Find<…> for …`) so that units of work find it by aggregate and
//! database.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{GenericArgument, ItemImpl, PathArguments};

use crate::ctxt::Ctxt;

const USAGE: &str = "`#[repository]` goes on `impl Repository for YourRepository { … }` or on `impl Find<YourFinder> for YourRepository { … }`";

pub(crate) fn expand(args: TokenStream, item: ItemImpl) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    if !args.is_empty() {
        cx.error(
            &args,
            "`#[repository]` takes no arguments: the aggregate is the impl's `type Aggregate` and the database its `type Connection`",
        );
    }
    if !item.generics.params.is_empty() {
        cx.error(
            &item.generics,
            "a repository cannot be generic: it is registered as one concrete type",
        );
    }
    let Some((_, trait_path, _)) = &item.trait_ else {
        cx.error(&item.self_ty, USAGE);
        return cx.check().map(|()| TokenStream::new());
    };
    let Some(last) = trait_path.segments.last() else {
        cx.error(trait_path, USAGE);
        return cx.check().map(|()| TokenStream::new());
    };
    let finder = if last.ident == "Repository" {
        None
    } else if last.ident == "Find" {
        match &last.arguments {
            PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
                GenericArgument::Type(t) => Some(t.clone()),
                other => {
                    cx.error(other, "`Find<F>` takes the finder type `F`");
                    None
                }
            },
            _ => {
                cx.error(last, "`Find<F>` takes the finder type `F`");
                None
            }
        }
    } else {
        cx.error(trait_path, USAGE);
        None
    };
    cx.check()?;

    let p = quote!(::eda_core::__private);
    let self_ty = &item.self_ty;
    let name = quote!(#self_ty).to_string().replace(' ', "");
    let span = self_ty.span();
    let file = quote_spanned!(span=> ::core::file!());
    let line = quote_spanned!(span=> ::core::line!());

    let registration = match finder {
        None => quote! {
            static __EDA_VTABLE: #p::RepositoryVTable<<#self_ty as #p::Repository>::Aggregate> =
                <#self_ty as #p::RepositoryVTableOf>::VTABLE;
            #p::inventory::submit! {
                #p::RepositoryRegistration::repository::<#self_ty>(#name, #file, #line, &__EDA_VTABLE)
            }
        },
        Some(finder) => {
            let finder_name = quote!(#finder).to_string().replace(' ', "");
            quote! {
                static __EDA_VTABLE: #p::FinderVTable<<#self_ty as #p::Repository>::Aggregate, #finder> =
                    <#self_ty as #p::FinderVTableOf<#finder>>::VTABLE;
                #p::inventory::submit! {
                    #p::RepositoryRegistration::finder::<#finder, #self_ty>(
                        #name, #finder_name, #file, #line, &__EDA_VTABLE,
                    )
                }
            }
        }
    };

    Ok(quote! {
        #item
        const _: () = {
            #registration
        };
    })
}
