//! `#[derive(UnitOfWork)]`: wires the transaction, the identity maps of the
//! repositories and the adapters in a struct's fields into a unit of work
//! (after axum's `#[derive(FromRef)]`: one piece of generated code per field).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, Type};

use crate::ctxt::{Ctxt, respan};

enum Role {
    Transaction,
    Skip,
    Field,
}

fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => {
            p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == name)
        }
        _ => false,
    }
}

fn role(field: &Field, cx: &mut Ctxt) -> Role {
    let mut role = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("uow")) {
        if let Err(e) = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("transaction") {
                role = Some(Role::Transaction);
            } else if meta.path.is_ident("skip") {
                role = Some(Role::Skip);
            } else {
                return Err(
                    meta.error("unknown unit of work option: expected `transaction` or `skip`")
                );
            }
            Ok(())
        }) {
            cx.push(e);
        }
    }
    role.unwrap_or(if is_named(&field.ty, "UowTransaction") {
        Role::Transaction
    } else {
        Role::Field
    })
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    if !input.generics.params.is_empty() {
        cx.error(
            &input.generics,
            "a unit of work cannot be generic: the bus builds it for handlers by its concrete type",
        );
    }
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(&named.named),
            Fields::Unit => None,
            Fields::Unnamed(_) => None,
        },
        _ => None,
    };
    let Some(fields) = fields else {
        cx.error(
            &input.ident,
            "a unit of work is a struct with named fields: `#[uow(transaction)] tx: UowTransaction`, `IdentityMap<…>` repositories, `Arc<…>` adapters",
        );
        return cx.check().map(|()| TokenStream::new());
    };

    let mut transaction: Option<&Field> = None;
    let mut members: Vec<&Field> = Vec::new();
    let mut skipped: Vec<&Field> = Vec::new();
    for field in fields {
        match role(field, &mut cx) {
            Role::Transaction => {
                if let Some(first) = transaction {
                    cx.error(
                        field,
                        format_args!(
                            "a unit of work has one transaction, and `{}` is already it",
                            first
                                .ident
                                .as_ref()
                                .map(|i| i.to_string())
                                .unwrap_or_default()
                        ),
                    );
                } else {
                    transaction = Some(field);
                }
            }
            Role::Skip => skipped.push(field),
            Role::Field => members.push(field),
        }
    }
    // An identity map is a repository's: it needs the transaction. Said
    // here when it is visible in the tokens; the const assertion below
    // catches the others (a type alias, a user's own `UowField`).
    if transaction.is_none() {
        for field in members.iter().filter(|f| is_named(&f.ty, "IdentityMap")) {
            cx.error(
                &field.ty,
                format_args!(
                    "field `{}` is an identity map, whose repository works in the unit of work's transaction, and `{}` has none: add `#[uow(transaction)] tx: eda_core::UowTransaction`",
                    field.ident.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                    input.ident,
                ),
            );
        }
    }
    cx.check()?;

    let ident = &input.ident;
    let ident_str = ident.to_string();
    let p = quote!(::eda_core::__private);
    // `<FieldType as UowField>`, with one span throughout: a field type that
    // is not a `UowField` is reported once, at the field, however many
    // generated functions use it.
    let field = |ty: &Type| {
        let span = ty.span();
        respan(quote!(<#ty as #p::UowField>), span)
    };

    // Assemble: the transaction (begun by the bus), then each field.
    let has_transaction = transaction.is_some();
    let tx_take = match transaction {
        Some(tx) => {
            let name = &tx.ident;
            let ty_span = tx.ty.span();
            let ty = quote_spanned!(ty_span=> #p::UowTransaction);
            quote! {
                let #name: #ty = match tx {
                    ::core::option::Option::Some(tx) => #p::UowTransaction::__begun(tx, ctx),
                    ::core::option::Option::None => return ::core::result::Result::Err(#p::Error::NoDatabase),
                };
            }
        }
        None => quote!(let _ = tx;),
    };
    // What the fields take from the bus once, as a tuple, one per member.
    let prepared_types: Vec<_> = members
        .iter()
        .map(|f| {
            let field = field(&f.ty);
            quote!(#field::Prepared)
        })
        .collect();
    let prepare_members: Vec<_> = members
        .iter()
        .map(|f| {
            let field = field(&f.ty);
            quote!(#field::__prepare(adapters))
        })
        .collect();
    // `()` is the unit type's value too: left out, so that clippy's
    // `unused_unit` has nothing to say in the user's crate.
    let prepared_value = if members.is_empty() {
        quote!()
    } else {
        quote!((#(#prepare_members,)*))
    };
    let member_begin = members.iter().enumerate().map(|(i, f)| {
        let name = &f.ident;
        let ty = &f.ty;
        let field = field(ty);
        let i = syn::Index::from(i);
        quote! { let #name = #field::__begin(&prepared.#i, ctx)?; }
    });
    let all_names = fields.iter().map(|f| &f.ident);
    let skipped_init = skipped.iter().map(|f| {
        let name = &f.ident;
        quote_spanned!(f.ty.span()=> let #name = ::core::default::Default::default();)
    });

    let require_tx = transaction.map(|_| quote!(requirements.database(#ident_str);));
    let changes: Vec<_> = members
        .iter()
        .map(|f| {
            let name = &f.ident;
            let field = field(&f.ty);
            quote!(#field::__changes(&self.#name))
        })
        .collect();
    let require_members = members.iter().map(|f| {
        let ty = &f.ty;
        let field = field(ty);
        quote!(#field::__require(requirements);)
    });

    // Fields that need a transaction, in a unit of work without one: say so
    // at the field.
    let needs_tx_checks = if transaction.is_none() {
        members
            .iter()
            .map(|f| {
                let ty = &f.ty;
                let msg = format!(
                    "field `{}` of unit of work `{ident_str}` is a repository, and needs a transaction: add `#[uow(transaction)] tx: eda_core::UowTransaction`",
                    f.ident.as_ref().map(|i| i.to_string()).unwrap_or_default()
                );
                let field = field(ty);
                quote_spanned! {ty.span()=>
                    const _: () = ::core::assert!(!#field::NEEDS_TRANSACTION, #msg);
                }
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };

    let (transaction_fn, commit_body, rollback_body, accessors) = match transaction {
        Some(tx) => {
            let tx_name = &tx.ident;
            let raise = quote! {
                /// Raises an event of this unit of work itself, not of one
                /// of its aggregates (an order line that names no known
                /// product, say): on commit it is handled like theirs, and
                /// written to the outbox if it is external; discarded if the
                /// unit of work does not commit. The events raised this way
                /// come before those of the aggregates.
                #[allow(dead_code)]
                pub fn raise<E: #p::EventTrait>(
                    &mut self,
                    event: E,
                ) -> ::core::result::Result<(), #p::Error> {
                    self.#tx_name.__raise(event)
                }

                /// Schedules a command or an event for `delay` from now:
                /// kept in this unit of work's transaction when it commits
                /// (discarded if it does not), and delivered when due by the
                /// bus's scheduler: a command to its handler here, an event
                /// to its handlers here and, if it is external, to other
                /// services. Returns its id, which
                /// [`cancel_scheduled`](Self::cancel_scheduled) takes.
                #[allow(dead_code)]
                pub fn schedule<M: #p::Message>(
                    &mut self,
                    message: M,
                    delay: ::std::time::Duration,
                ) -> ::core::result::Result<#p::MessageId, #p::Error> {
                    self.#tx_name.__schedule(message, ::std::time::SystemTime::now() + delay)
                }

                /// Schedules a command or an event for a point in time (see
                /// [`schedule`](Self::schedule)); one in the past is due at
                /// once.
                #[allow(dead_code)]
                pub fn schedule_at<M: #p::Message>(
                    &mut self,
                    message: M,
                    at: ::std::time::SystemTime,
                ) -> ::core::result::Result<#p::MessageId, #p::Error> {
                    self.#tx_name.__schedule(message, at)
                }

                /// Cancels a scheduled message, in this unit of work's
                /// transaction (undone if it does not commit). Returns
                /// `false` if its delivery has begun (or it was delivered,
                /// or there is none with this id): then it is, or was,
                /// delivered.
                #[allow(dead_code)]
                pub async fn cancel_scheduled(
                    &mut self,
                    id: #p::MessageId,
                ) -> ::core::result::Result<bool, #p::Error> {
                    self.#tx_name.__cancel_scheduled(id).await
                }
            };
            let flushes = members.iter().map(|f| {
                let name = &f.ident;
                let field = field(&f.ty);
                quote! {
                    if let ::core::result::Result::Err(e) =
                        #field::__flush(&mut self.#name, &mut self.#tx_name).await
                    {
                        return self.#tx_name.__abort(e).await;
                    }
                }
            });
            let discards = members.iter().map(|f| {
                let name = &f.ident;
                let ty = &f.ty;
                let field = field(ty);
                quote!(#field::__discard(&mut self.#name);)
            });
            let accessors = members.iter().map(|f| {
                let name = &f.ident;
                let field = field(&f.ty);
                let doc = format!(
                    "The `{}` of this unit of work, working in its transaction.",
                    name.as_ref().map(|i| i.to_string()).unwrap_or_default()
                );
                // Public whatever the field's visibility: only the bus builds
                // a unit of work, so this exposes nothing, and handlers in any
                // module of the crate can use it while the field stays private.
                quote! {
                    #[doc = #doc]
                    #[allow(private_interfaces)]
                    pub fn #name(&mut self) -> #field::Handle<'_> {
                        #field::__handle(&mut self.#name, &mut self.#tx_name)
                    }
                }
            });
            (
                quote! {
                    fn __transaction(&mut self) -> ::core::option::Option<&mut #p::UowTransaction> {
                        ::core::option::Option::Some(&mut self.#tx_name)
                    }
                },
                quote! {
                    self.#tx_name.__check_active()?;
                    #(#flushes)*
                    self.#tx_name.__commit().await
                },
                quote! {
                    #(#discards)*
                    self.#tx_name.__rollback().await
                },
                accessors.chain(std::iter::once(raise)).collect::<Vec<_>>(),
            )
        }
        None => (
            quote! {
                fn __transaction(&mut self) -> ::core::option::Option<&mut #p::UowTransaction> {
                    ::core::option::Option::None
                }
            },
            quote!(::core::result::Result::Ok(())),
            quote!(::core::result::Result::Ok(())),
            Vec::new(),
        ),
    };

    Ok(quote! {
        #(#needs_tx_checks)*

        impl #p::UnitOfWorkTrait for #ident {
            const __TRANSACTION: bool = #has_transaction;

            type __Prepared = (#(#prepared_types,)*);

            fn __prepare(adapters: &#p::Adapters<'_>) -> Self::__Prepared {
                let _ = adapters;
                #prepared_value
            }

            fn __assemble(
                tx: ::core::option::Option<#p::Begun>,
                prepared: &Self::__Prepared,
                ctx: &#p::Context<'_>,
                out: &mut ::core::option::Option<Self>,
            ) -> ::core::result::Result<(), #p::Error> {
                let _ = prepared;
                #tx_take
                #(#member_begin)*
                #(#skipped_init)*
                *out = ::core::option::Option::Some(#ident { #(#all_names),* });
                ::core::result::Result::Ok(())
            }

            fn __require(requirements: &mut #p::Requirements) {
                #require_tx
                #(#require_members)*
            }

            fn __changes(&self) -> usize {
                0 #(+ #changes)*
            }

            #transaction_fn

            fn commit(&mut self) -> impl ::core::future::Future<Output = ::core::result::Result<(), #p::Error>>
                   + ::core::marker::Send {
                async move { #commit_body }
            }

            fn rollback(&mut self) -> impl ::core::future::Future<Output = ::core::result::Result<(), #p::Error>>
                   + ::core::marker::Send {
                async move { #rollback_body }
            }
        }

        impl #ident {
            /// Saves every aggregate loaded or added (checking versions),
            /// writes the outbox, commits, and hands the events raised to the
            /// bus. A version conflict is an error for which the bus runs the
            /// command again.
            #[allow(dead_code)]
            pub async fn commit(&mut self) -> ::core::result::Result<(), #p::Error> {
                <Self as #p::UnitOfWorkTrait>::commit(self).await
            }

            /// Rolls back and discards the events raised (dropping an
            /// uncommitted unit of work does the same).
            #[allow(dead_code)]
            pub async fn rollback(&mut self) -> ::core::result::Result<(), #p::Error> {
                <Self as #p::UnitOfWorkTrait>::rollback(self).await
            }

            #(#accessors)*
        }
    })
}
