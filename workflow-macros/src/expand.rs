//! Code generation: the original function, the collected errors, and the
//! workflow struct with its `Workflow` impl and type assertions.

use std::time::Duration;

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Item, ItemFn, Type};

use crate::args::Args;
use crate::ast::{Handler, TypeRole, Workflow};
use crate::ctxt::Errors;

/// The whole expansion of `#[workflow(attr)] item`.
///
/// The item is always emitted unchanged, errors or not, so the function
/// stays visible to the rest of the crate and to IDEs, and a mistake in the
/// attribute does not turn into "cannot find function" errors elsewhere.
pub(crate) fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        Ok(other) => {
            let err = syn::Error::new(
                item_keyword_span(&other),
                "`#[workflow]` goes on an `async fn`: \
                 `async fn name(ctx: Ctx<State>, input: Input) -> Result<Output, Error>`",
            )
            .to_compile_error();
            return quote!(#item #err);
        }
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#item #err);
        }
    };

    let mut errors = Errors::default();
    let args = Args::parse(attr, &mut errors);
    let model = Workflow::from_syn(&args, &func, &mut errors);
    let errors = errors.to_compile_errors();
    if crate::ast::has_workflow_attr(&func.attrs) {
        // The one left expands next and declares the workflow: declaring
        // it here too would add rustc's clashes to the error said above.
        return quote!(#item #errors);
    }
    let generated = generate(&model);
    quote! {
        #item
        #errors
        #generated
    }
}

fn item_keyword_span(item: &Item) -> Span {
    match item {
        Item::Struct(item) => item.struct_token.span,
        Item::Enum(item) => item.enum_token.span,
        Item::Impl(item) => item.impl_token.span,
        Item::Trait(item) => item.trait_token.span,
        Item::Mod(item) => item.mod_token.span,
        Item::Const(item) => item.const_token.span,
        Item::Static(item) => item.static_token.span,
        Item::Type(item) => item.type_token.span,
        Item::Union(item) => item.union_token.span,
        Item::Use(item) => item.use_token.span,
        other => other.span(),
    }
}

/// The struct, and when the handler can be called as written, its
/// `Workflow` impl and the type assertions. Without a usable struct name
/// (an error says why), the type assertions alone: the same build reports
/// a type that is not `Serialize` too, not only once the name is fixed.
pub(crate) fn generate(wf: &Workflow) -> TokenStream {
    if wf.is_method {
        return TokenStream::new();
    }
    let krate = &wf.krate;
    let private = quote!(#krate::__private);
    let vis = &wf.func.vis;
    let cfgs = &wf.cfgs;
    let deprecated = &wf.deprecated;
    let doc = if wf.description.is_empty() {
        let doc = format!("Workflow `{}`.", wf.name);
        quote!(#doc)
    } else {
        wf.description
            .to_tokens_after(&format!("Workflow `{}`: ", wf.name))
    };

    let declaration = match &wf.struct_ident {
        Some(ident) => quote! {
            #(#cfgs)*
            #(#deprecated)*
            #[doc = #doc]
            #[derive(
                ::core::fmt::Debug,
                ::core::clone::Clone,
                ::core::marker::Copy,
                ::core::default::Default
            )]
            #vis struct #ident;
        },
        None => TokenStream::new(),
    };

    let Some(handler) = &wf.handler else {
        // The parameters or the return type are refused: the types read
        // from the rest are still checked, in the same build.
        let checks: Vec<TokenStream> = wf
            .partial
            .iter()
            .map(|(ty, role)| {
                let (bound, check) = requirement(*role);
                assert_impl(&private, ty, &bound, &check)
            })
            .collect();
        return with_checks(declaration, cfgs, &checks);
    };
    let Handler {
        state,
        ctx: ctx_type,
        input,
        output,
        output_projected,
        error,
        result_span,
        callable,
    } = handler;
    // A bare `Ctx` is the prelude's (state `()`) or an alias of the
    // user's (`type Ctx = workflow::Ctx<OrderState>`): the type says which.
    let projected = state.is_none();
    let state: &Type = &match state {
        Some(state) => state.clone(),
        None => syn::parse_quote_spanned! {ctx_type.span()=>
            <#ctx_type as #private::HandlerCtx>::State
        },
    };

    // An alias of `Result` (`AppResult<Out>`): the type says its output.
    let output: &Type = &if *output_projected {
        syn::parse_quote_spanned! {output.span()=>
            <#output as #private::HandlerReturn>::Output
        }
    } else {
        (*output).clone()
    };

    let fn_ident = &wf.func.sig.ident;
    let name = &wf.name;
    let description = wf.description.to_tokens_after("");
    let timezone = &wf.timezone;
    let schedule = match &wf.schedule {
        Some(schedule) => quote!(::core::option::Option::Some(#schedule)),
        None => quote!(::core::option::Option::None),
    };
    let timeout = duration(&private, wf.timeout);
    let steps = &wf.steps;
    let catch_up = match wf.catch_up {
        crate::ast::CatchUp::All => quote!(#private::CatchUp::All),
        crate::ast::CatchUp::Latest => quote!(#private::CatchUp::Latest),
        crate::ast::CatchUp::None => quote!(#private::CatchUp::None),
    };
    // Each cron tick starts the workflow with `Default::default()`; the
    // `ScheduledInput` check above reports a missing `Default` at the type.
    let schedule_input = wf.schedule.as_ref().map(|_| {
        quote! {
            fn schedule_input() -> ::core::option::Option<#input> {
                ::core::option::Option::Some(<#input as ::core::default::Default>::default())
            }
        }
    });
    let retries = match wf.retries {
        Some(retries) => quote!(::core::option::Option::Some(#retries)),
        None => quote!(::core::option::Option::None),
    };
    // Settings left out of `backoff(..)` name the runtime's own defaults.
    let backoff = match &wf.backoff {
        Some(backoff) => {
            let default = quote!(#private::Backoff::DEFAULT);
            let initial = match backoff.initial {
                Some(initial) => duration(&private, initial),
                None => quote!(#default.initial),
            };
            let factor = match backoff.factor {
                Some(factor) => float(factor),
                None => quote!(#default.factor),
            };
            let max = match backoff.max {
                Some(max) => duration(&private, max),
                None => quote!(#default.max),
            };
            quote! {
                ::core::option::Option::Some(#private::Backoff {
                    initial: #initial,
                    factor: #factor,
                    max: #max,
                })
            }
        }
        None => quote!(::core::option::Option::None),
    };
    let jitter = match wf.jitter {
        Some(jitter) => {
            let jitter = float(jitter);
            quote!(::core::option::Option::Some(#jitter))
        }
        None => quote!(::core::option::Option::None),
    };

    // Each type requirement is checked twice on purpose. The checks in
    // `const _` report a missing trait once, at the user's type, with the
    // wording of the `__private` traits. The same requirements, as
    // `for<'__w>` bounds on the impl, are then assumed inside it, so the
    // impl's own checks (the bounds of `Workflow::Input` etc.) do not report
    // the same mistake again in rustc's generic words. A bound under an
    // unused `for<..>` is not rejected as trivially false on stable, unlike
    // a plain `where OrderInput: WorkflowInput`.
    let role = |ty, role| {
        let (bound, check) = requirement(role);
        (ty, bound, check)
    };
    let mut requirements = vec![
        role(*input, TypeRole::Input),
        role(output, TypeRole::Output),
        (state, quote!(WorkflowState), quote!(__check_state)),
    ];
    if wf.schedule.is_some() {
        requirements.push((
            *input,
            quote!(ScheduledInput),
            quote!(__check_scheduled_input),
        ));
    }
    if let Some(error) = error {
        requirements.push(role(*error, TypeRole::Error));
    }
    let checks: Vec<TokenStream> = requirements
        .iter()
        .map(|(ty, bound, check)| assert_impl(&private, ty, bound, check))
        .collect();
    // A generic function's types name parameters the checks cannot see.
    if !callable && !wf.func.sig.generics.params.is_empty() {
        return declaration;
    }
    let Some(ident) = wf.struct_ident.as_ref().filter(|_| *callable) else {
        return with_checks(declaration, cfgs, &checks);
    };
    // Not a projected state or output: rustc cannot normalize it under
    // `for<..>`.
    // The `Workflow` impl's own bound on `State` then words a mistake in
    // an alias's state type a second time.
    let bounds: Vec<TokenStream> = requirements
        .iter()
        .filter(|(_, _, check)| {
            let check = check.to_string();
            !(projected && check == "__check_state"
                || *output_projected && check == "__check_output")
        })
        .map(|(ty, bound, _)| quote!(for<'__w> #ty: #private::#bound))
        .collect();

    // The error type may not be written out (`anyhow::Result<T>`); a local
    // generic function still names it in the check, reported at `Result`.
    // `run`'s parameters are mixed-site: the user's names cannot see them,
    // so a workflow function named `input` or `ctx` is still the one called.
    let ctx = Ident::new("ctx", Span::mixed_site());
    let input_value = Ident::new("input", Span::mixed_site());
    let call = quote!(#fn_ident(#ctx, #input_value).await);
    let convert = quote_spanned!(*result_span=> __into_box_error(#call));
    // Spanned at the function's name: a handler whose future is not `Send`
    // is reported there, with rustc's note on the value held across `.await`.
    let future = quote_spanned!(fn_ident.span()=> async move { #convert });
    let future_type = quote_spanned! {fn_ident.span()=>
        impl #private::Future<
            Output = #private::Result<#output, #private::BoxError>,
        > + ::core::marker::Send
    };
    // Spanned at the user's types: a `pub` workflow whose input is private
    // is refused (E0446) at that type, not at the attribute.
    let input_item = quote_spanned!(input.span()=> type Input = #input;);
    let output_item = quote_spanned!(output.span()=> type Output = #output;);
    let state_item = quote_spanned!(state.span()=> type State = #state;);
    let items = quote! {
        #input_item
        #output_item
        #state_item

        const NAME: &'static ::core::primitive::str = #name;
        const DESCRIPTION: &'static ::core::primitive::str = #description;
        const SCHEDULE: ::core::option::Option<&'static ::core::primitive::str> = #schedule;
        const TIMEZONE: &'static ::core::primitive::str = #timezone;
        const TIMEOUT: #private::Duration = #timeout;
        const STEPS: &'static [&'static ::core::primitive::str] = &[#(#steps),*];
        const RETRIES: ::core::option::Option<::core::primitive::u32> = #retries;
        const BACKOFF: ::core::option::Option<#private::Backoff> = #backoff;
        const JITTER: ::core::option::Option<::core::primitive::f64> = #jitter;
        const CATCH_UP: #private::CatchUp = #catch_up;

        #schedule_input

        fn run(
            &self,
            #ctx: #private::Ctx<#state>,
            #input_value: #input,
        ) -> #future_type {
            fn __into_box_error<T, E: #private::HandlerError>(
                result: #private::Result<T, E>,
            ) -> #private::Result<T, #private::BoxError> {
                result.map_err(#private::into_box_error)
            }
            #future
        }
    };

    quote! {
        #declaration

        // Documentation shows the impl without the bounds above: they only
        // shape error messages.
        // The generated code calls the function and names the struct: a
        // deprecated workflow warns where the user's code uses it, not here.
        #(#cfgs)*
        #[cfg(not(doc))]
        #[allow(deprecated)]
        impl #private::Workflow for #ident where #(#bounds),* {
            #items
        }
        #(#cfgs)*
        #[cfg(doc)]
        #[allow(deprecated)]
        impl #private::Workflow for #ident {
            #items
        }

        #(#cfgs)*
        #[allow(deprecated)]
        const _: () = {
            #(#checks)*
        };
    }
}

/// A `Duration` expression, exact to the nanosecond.
fn duration(private: &TokenStream, d: Duration) -> TokenStream {
    // `from_millis` takes a `u64`, which the longest durations overflow.
    let millis = u64::try_from(d.as_millis()).ok();
    if let (true, Some(millis)) = (d.subsec_nanos().is_multiple_of(1_000_000), millis) {
        let millis = Literal::u64_unsuffixed(millis);
        quote!(#private::Duration::from_millis(#millis))
    } else {
        let secs = Literal::u64_unsuffixed(d.as_secs());
        let nanos = Literal::u32_unsuffixed(d.subsec_nanos());
        quote!(#private::Duration::new(#secs, #nanos))
    }
}

/// An `f64` literal that reads back as `value` (checked finite and not
/// negative before it gets here).
fn float(value: f64) -> TokenStream {
    let lit = Literal::f64_unsuffixed(value);
    quote!(#lit)
}

/// The `__private` trait a persisted type of the handler must implement,
/// and the name of the function that checks it.
fn requirement(role: TypeRole) -> (TokenStream, TokenStream) {
    match role {
        TypeRole::Input => (quote!(WorkflowInput), quote!(__check_input)),
        TypeRole::Output => (quote!(WorkflowOutput), quote!(__check_output)),
        TypeRole::Error => (quote!(HandlerError), quote!(__check_error)),
    }
}

/// The struct (if any) and the type checks alone, for a handler the impl
/// cannot be generated for.
fn with_checks(
    declaration: TokenStream,
    cfgs: &[&Attribute],
    checks: &[TokenStream],
) -> TokenStream {
    quote! {
        #declaration

        #(#cfgs)*
        #[allow(deprecated)]
        const _: () = {
            #(#checks)*
        };
    }
}

/// `ty: bound`, checked where `ty` is written, so the error names and
/// underlines the user's type rather than pointing into the expansion. A
/// generic function is used instead of a `where` clause on a concrete type
/// because rustc words trivially false bounds with a `trivial_bounds`
/// feature hint that is noise here. The function's name shows up in the
/// error's "required by a bound in" note.
fn assert_impl(
    private: &TokenStream,
    ty: &Type,
    bound: &TokenStream,
    check: &TokenStream,
) -> TokenStream {
    let call = quote_spanned!(ty.span()=> #check::<#ty>);
    quote! {
        {
            fn #check<T: #private::#bound>() {}
            let _ = #call;
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    fn expand(attr: TokenStream, item: TokenStream) -> String {
        super::workflow(attr, item).to_string()
    }

    #[test]
    fn generates_struct_impl_and_checks() {
        let out = expand(
            quote!(name = "processOrder", timeout = "10m"),
            quote! {
                /// Process a new customer order
                pub async fn process_order(ctx: Ctx<St>, input: OrderInput) -> workflow::Result<OrderOutput> {
                    ctx.step("fetch-order", f).await?;
                    ctx.step("charge-payment", f).await?;
                    ctx.step("fetch-order", f).await
                }
            },
        );
        if std::env::var_os("PRINT_EXPANSION").is_some() {
            println!("{out}");
        }
        for expected in [
            "pub async fn process_order",
            "# [doc = \"Workflow `processOrder`: Process a new customer order\"]",
            "pub struct ProcessOrder ;",
            "impl :: workflow :: __private :: Workflow for ProcessOrder where for < '__w > OrderInput : :: workflow :: __private :: WorkflowInput",
            "type Input = OrderInput ;",
            "type Output = OrderOutput ;",
            "type State = St ;",
            "const NAME : & 'static :: core :: primitive :: str = \"processOrder\" ;",
            "const DESCRIPTION : & 'static :: core :: primitive :: str = \"Process a new customer order\" ;",
            "const TIMEOUT : :: workflow :: __private :: Duration = :: workflow :: __private :: Duration :: from_millis (600000) ;",
            "const STEPS : & 'static [& 'static :: core :: primitive :: str] = & [\"fetch-order\" , \"charge-payment\"] ;",
            "__into_box_error (process_order (ctx , input) . await)",
            "let _ = __check_input :: < OrderInput > ;",
            "compile_error ! { \"step name \\\"fetch-order\\\" is already used",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(!out.contains("__check_scheduled_input"), "{out}");
        assert!(!out.contains("__check_error"), "{out}");
    }

    #[test]
    fn crate_override_and_schedule() {
        let out = expand(
            quote!(crate = my::wf, schedule = "@daily"),
            quote!(
                async fn tick(ctx: Ctx, input: ()) -> Result<(), E> {}
            ),
        );
        assert!(
            out.contains("impl my :: wf :: __private :: Workflow for Tick"),
            "{out}"
        );
        assert!(!out.contains(":: workflow ::"), "{out}");
        assert!(out.contains("Some (\"@daily\")"), "{out}");
        assert!(out.contains("__check_scheduled_input :: < () >"), "{out}");
        assert!(out.contains("__check_error :: < E >"), "{out}");
    }

    #[test]
    fn step_defaults_become_consts() {
        let item = quote!(
            async fn flaky(ctx: Ctx, input: ()) -> workflow::Result<()> {}
        );
        let out = expand(
            quote!(
                retries = 4,
                backoff(initial = "250ms", factor = 2, max = "1m 30s"),
                jitter = 0.25
            ),
            item.clone(),
        );
        for expected in [
            "const RETRIES : :: core :: option :: Option < :: core :: primitive :: u32 > = :: core :: option :: Option :: Some (4u32) ;",
            "const BACKOFF : :: core :: option :: Option < :: workflow :: __private :: Backoff > = \
             :: core :: option :: Option :: Some (:: workflow :: __private :: Backoff { \
             initial : :: workflow :: __private :: Duration :: from_millis (250) , \
             factor : 2.0 , \
             max : :: workflow :: __private :: Duration :: from_millis (90000) , }) ;",
            "const JITTER : :: core :: option :: Option < :: core :: primitive :: f64 > = :: core :: option :: Option :: Some (0.25) ;",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(!out.contains("compile_error"), "{out}");

        // Settings left out name the runtime's defaults; no jitter keeps the engine's.
        let out = expand(quote!(backoff(factor = 3.5)), item.clone());
        for expected in [
            "initial : :: workflow :: __private :: Backoff :: DEFAULT . initial ,",
            "factor : 3.5 ,",
            "max : :: workflow :: __private :: Backoff :: DEFAULT . max ,",
            "const RETRIES : :: core :: option :: Option < :: core :: primitive :: u32 > = :: core :: option :: Option :: None ;",
            "const JITTER : :: core :: option :: Option < :: core :: primitive :: f64 > = :: core :: option :: Option :: None ;",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }

        // Exact to the nanosecond, and past `u64` milliseconds.
        let out = expand(
            quote!(backoff(initial = "1us", max = "500000000000000000s")),
            item.clone(),
        );
        assert!(
            out.contains("initial : :: workflow :: __private :: Duration :: new (0 , 1000) ,"),
            "{out}"
        );
        assert!(
            out.contains(
                "max : :: workflow :: __private :: Duration :: new (500000000000000000 , 0) ,"
            ),
            "{out}"
        );

        let out = expand(quote!(), item);
        assert!(
            out.contains("const BACKOFF : :: core :: option :: Option < :: workflow :: __private :: Backoff > = :: core :: option :: Option :: None ;"),
            "{out}"
        );
    }

    #[test]
    fn backoff_and_jitter_need_more_than_one_attempt() {
        let out = expand(
            quote!(retries = 1, backoff(initial = "1s"), jitter = 0.5),
            quote!(
                async fn once(ctx: Ctx, input: ()) -> workflow::Result<()> {}
            ),
        );
        assert_eq!(out.matches("compile_error !").count(), 2, "{out}");
        assert!(
            out.contains("`backoff` has no effect with `retries = 1`: a step with one attempt never waits to retry; remove `backoff` or allow more attempts"),
            "{out}"
        );
        assert!(
            out.contains("`jitter` has no effect with `retries = 1`"),
            "{out}"
        );
    }

    #[test]
    fn keeps_the_function_and_declares_the_struct_on_errors() {
        let out = expand(
            quote!(timeout = "soon"),
            quote!(
                fn sync_all(ctx: Ctx, input: ()) -> Result<()> {}
            ),
        );
        assert!(
            out.starts_with("fn sync_all (ctx : Ctx , input : ()) -> Result < () > { }"),
            "{out}"
        );
        assert!(out.contains("struct SyncAll ;"), "{out}");
        assert!(!out.contains("impl"), "{out}");
        assert_eq!(out.matches("compile_error !").count(), 2, "{out}");
    }

    #[test]
    fn rejects_other_items_but_keeps_them() {
        let out = expand(
            quote!(),
            quote!(
                struct Foo;
            ),
        );
        assert!(out.starts_with("struct Foo ;"), "{out}");
        assert!(out.contains("goes on an `async fn`"), "{out}");
    }
}
