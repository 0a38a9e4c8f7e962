//! `#[forkless::main]`: turns `async fn main(worker: Worker)` into a program
//! that runs it on every core. Use it through the `forkless` crate.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, Meta, MetaNameValue, Pat, Token, Type};

const OPTIONS: &str =
    "`workers`, `shutdown_timeout`, `terminate_timeout`, `throttle_delay`, `crate`";

/// Runs an `async fn(worker: forkless::Worker)` on every core as a forkless
/// cluster. See the `forkless` crate's documentation of `forkless::main`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: TokenStream2 = item.clone().into();
    let func = match syn::parse::<ItemFn>(item) {
        Ok(func) => func,
        // Not a function: let the compiler say what it is.
        Err(e) => return with_error(item2, e),
    };
    if let Err(e) = check_signature(&func) {
        return with_error(item2, e);
    }
    match parse_options(args.into()) {
        Ok(options) => expand(options, func).into(),
        // The signature is fine: keep the body as a nested function so that
        // only the option's error shows.
        Err(e) => {
            let error = e.into_compile_error();
            let ItemFn {
                attrs,
                vis,
                sig,
                block,
            } = func;
            let name = &sig.ident;
            let mut body_sig = sig.clone();
            body_sig.ident = syn::Ident::new("__forkless_worker_body", sig.ident.span());
            quote! {
                #(#attrs)*
                #vis fn #name() {
                    #[allow(dead_code)]
                    #body_sig #block
                }
                #error
            }
            .into()
        }
    }
}

/// On error, emit the function as written too, so that IDEs keep working.
fn with_error(item: TokenStream2, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error).into()
}

#[derive(Default)]
struct Options {
    workers: Option<usize>,
    shutdown_timeout: Option<TokenStream2>,
    terminate_timeout: Option<TokenStream2>,
    throttle_delay: Option<TokenStream2>,
    krate: Option<syn::Path>,
}

fn parse_options(args: TokenStream2) -> syn::Result<Options> {
    let parsed = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse2(args)
        .map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected `name = value` options, one of: {OPTIONS}"),
            )
        })?;
    let mut options = Options::default();
    for meta in parsed {
        let option: MetaNameValue = match meta {
            Meta::NameValue(option) => option,
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!(
                        "`{}` needs a value: expected `name = value`, with a name among: {OPTIONS}",
                        other.path().to_token_stream()
                    ),
                ))
            }
        };
        let name = option
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let value = &option.value;
        let duplicate = || syn::Error::new(option.path.span(), format!("`{name}` is set twice"));
        match name.as_str() {
            "workers" => {
                if options.workers.is_some() {
                    return Err(duplicate());
                }
                options.workers = Some(parse_workers(value)?);
            }
            "shutdown_timeout" | "terminate_timeout" | "throttle_delay" => {
                let duration = parse_duration(&name, value)?;
                let slot = match name.as_str() {
                    "shutdown_timeout" => &mut options.shutdown_timeout,
                    "terminate_timeout" => &mut options.terminate_timeout,
                    _ => &mut options.throttle_delay,
                };
                if slot.is_some() {
                    return Err(duplicate());
                }
                *slot = Some(duration);
            }
            "crate" => {
                if options.krate.is_some() {
                    return Err(duplicate());
                }
                let path = string_literal(value).ok_or_else(|| {
                    syn::Error::new(
                        value.span(),
                        "expected a path in a string, like `crate = \"forkless\"`",
                    )
                })?;
                options.krate = Some(path.parse()?);
            }
            _ => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!(
                        "unknown option `{}`, expected one of: {OPTIONS}",
                        option.path.to_token_stream()
                    ),
                ))
            }
        }
    }
    Ok(options)
}

fn string_literal(value: &Expr) -> Option<syn::LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => None,
    }
}

fn parse_workers(value: &Expr) -> syn::Result<usize> {
    let error = || {
        syn::Error::new(
            value.span(),
            "expected a number of workers of at least 1, like `workers = 4`",
        )
    };
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => match n.base10_parse::<usize>() {
            Ok(0) | Err(_) => Err(error()),
            Ok(n) => Ok(n),
        },
        _ => Err(error()),
    }
}

fn parse_duration(name: &str, value: &Expr) -> syn::Result<TokenStream2> {
    let error = |why: String| {
        syn::Error::new(
            value.span(),
            format!("expected a duration in a string, like `{name} = \"5s\"` or `\"500ms\"`{why}"),
        )
    };
    let lit = string_literal(value).ok_or_else(|| error(String::new()))?;
    let duration = humantime::parse_duration(&lit.value()).map_err(|e| error(format!(": {e}")))?;
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    Ok(quote_spanned!(lit.span()=> ::core::time::Duration::new(#secs, #nanos)))
}

fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "the `async` keyword is missing from the function declaration",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "the worker body cannot be generic",
        ));
    }
    if sig.inputs.len() != 1 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs.span()
        };
        return Err(syn::Error::new(
            span,
            "the worker body takes one argument: `worker: forkless::Worker`",
        ));
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            return Err(syn::Error::new(
                receiver.span(),
                "the worker body takes one argument: `worker: forkless::Worker`, not `self`",
            ))
        }
        Some(FnArg::Typed(arg)) => {
            let is_worker = matches!(
                &*arg.ty,
                Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Worker")
            );
            if !is_worker {
                return Err(syn::Error::new(
                    arg.ty.span(),
                    "the worker body's argument must be a `forkless::Worker`",
                ));
            }
            if matches!(&*arg.pat, Pat::Wild(_) | Pat::Ident(_)) {
                return Ok(());
            }
            return Err(syn::Error::new(
                arg.pat.span(),
                "expected a name for the worker, like `worker: forkless::Worker`",
            ));
        }
        None => {}
    }
    Ok(())
}

fn expand(options: Options, func: ItemFn) -> TokenStream2 {
    let sig = &func.sig;

    let krate = options
        .krate
        .map(ToTokens::into_token_stream)
        .unwrap_or_else(|| quote!(::forkless));
    let mut settings = TokenStream2::new();
    if let Some(n) = options.workers {
        settings.extend(quote!(.workers(#n)));
    }
    for (method, value) in [
        ("shutdown_timeout", options.shutdown_timeout),
        ("terminate_timeout", options.terminate_timeout),
        ("throttle_delay", options.throttle_delay),
    ] {
        if let Some(value) = value {
            let method = syn::Ident::new(method, Span::call_site());
            settings.extend(quote!(.#method(#value)));
        }
    }

    let attrs = &func.attrs;
    let vis = &func.vis;
    let name = &sig.ident;
    let mut body_sig = sig.clone();
    body_sig.ident = syn::Ident::new("__forkless_worker_body", sig.ident.span());
    let block = &func.block;
    quote! {
        #(#attrs)*
        #vis fn #name() -> ::std::process::ExitCode {
            #body_sig #block
            let builder = #krate::Cluster::builder() #settings;
            #krate::__private::exit_code(builder.run(__forkless_worker_body))
        }
    }
}
