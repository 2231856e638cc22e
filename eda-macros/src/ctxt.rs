//! An accumulator of errors, so the user sees every mistake at once, each at
//! the span of the offending tokens (after serde_derive's `Ctxt`).

use std::fmt::Display;

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::ToTokens;

#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn check(self) -> Result<(), syn::Error> {
        match self.errors {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The item as the user wrote it, plus the errors: the IDE keeps working on
/// the item and the user sees only the errors that matter.
pub(crate) fn with_errors(item: impl ToTokens, error: syn::Error) -> TokenStream {
    let mut out = item.to_token_stream();
    out.extend(error.to_compile_error());
    out
}

/// The tokens with every span set to `span`: generated code that mentions a
/// user's type several times then has every obligation about it at one span,
/// and rustc reports an unsatisfied one once.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}
