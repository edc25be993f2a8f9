//! The checked model of one `#[workflow]`: what the expansion needs, built
//! from the attribute and the function, with every problem recorded on the
//! way.

use std::time::Duration;

use proc_macro2::Span;
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{
    Attribute, Expr, ExprLit, FnArg, GenericArgument, Ident, ItemFn, Lit, Macro, Meta, PatType,
    Path, PathArguments, ReturnType, Signature, Token, Type,
};

use crate::args::Args;
use crate::ctxt::Errors;
use crate::validate;

/// The `catch_up` policies, mirroring `workflow::CatchUp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUp {
    All,
    Latest,
    None,
}

/// `backoff(..)`, checked: the settings written and valid; the others keep
/// `Backoff::DEFAULT`'s.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Backoff {
    pub initial: Option<Duration>,
    pub factor: Option<f64>,
    pub max: Option<Duration>,
}

/// Five minutes, the default deadline of an instance.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One `#[workflow]`, checked.
pub(crate) struct Workflow<'a> {
    /// Path to the facade crate (`::workflow` unless overridden).
    pub krate: Path,
    pub func: &'a ItemFn,
    /// The generated unit struct; `None` if the function's name gives no
    /// usable struct name (reported), in which case nothing is generated.
    pub struct_ident: Option<Ident>,
    pub name: String,
    pub description: Description,
    pub schedule: Option<String>,
    pub timezone: String,
    pub timeout: Duration,
    /// What the schedule does about missed ticks.
    pub catch_up: CatchUp,
    /// Default attempts per step.
    pub retries: Option<u32>,
    /// Default waits between a step's attempts.
    pub backoff: Option<Backoff>,
    /// Default jitter of those waits.
    pub jitter: Option<f64>,
    /// Literal step names in source order, each once.
    pub steps: Vec<String>,
    /// `None` when the parameters or the return type do not have the
    /// handler's shape.
    pub handler: Option<Handler<'a>>,
    /// Without a handler: the input, output and error types that were
    /// read all the same, so that their trait checks still run and one
    /// build reports every mistake.
    pub partial: Vec<(&'a Type, TypeRole)>,
    /// A method (it takes `self`): it sits in an `impl` block, where the
    /// generated struct could not go, so nothing is generated.
    pub is_method: bool,
    /// `#[cfg]`s of the function, repeated on the generated items so they
    /// come and go together.
    pub cfgs: Vec<&'a Attribute>,
    /// The function's `#[deprecated]`, given to the struct too: retiring a
    /// workflow deprecates the name that registers it.
    pub deprecated: Vec<&'a Attribute>,
}

/// The types of a handler `async fn(ctx: Ctx<S>, input: I) -> R<O, E>`.
/// What a persisted type of the handler is, for its trait check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRole {
    Input,
    Output,
    Error,
}

pub(crate) struct Handler<'a> {
    /// `S` of a `Ctx<S>`; `None` for a bare `Ctx`, which may be the
    /// prelude's (state `()`) or the user's alias of a `Ctx<S>`: the
    /// expansion asks the type itself (`HandlerCtx::State`).
    pub state: Option<Type>,
    /// The context parameter's type, as written.
    pub ctx: &'a Type,
    pub input: &'a Type,
    /// `O` of a `Result<O, E>`; for an alias of one (`AppResult<O>`), the
    /// whole return type, whose `HandlerReturn::Output` the expansion asks.
    pub output: &'a Type,
    /// Whether `output` is such an alias.
    pub output_projected: bool,
    /// `E`, when the `Result` names it.
    pub error: Option<&'a Type>,
    /// The `Result` of the return type: where an error type that does not
    /// convert into `BoxError` is reported when the type is not written out.
    pub result_span: Span,
    /// Whether the generated impl can call the function as written (it is
    /// a plain `async fn`); if not, only the types are checked, so one
    /// build still reports a missing `Deserialize` beside the missing
    /// `async`.
    pub callable: bool,
}

/// A `.step("literal", ..)` or `.step_with("literal", ..)` call site.
#[derive(Debug, Clone)]
pub(crate) struct StepCall {
    pub name: String,
    pub span: Span,
    /// Inside a `for`/`while`/`loop` or a closure, where one call site may
    /// run many times.
    pub in_loop: bool,
    /// `.step(..)` or `.step_with(..)`; otherwise another `ctx` method whose
    /// name is a step name too (`sleep`, `wait_for_event`, `run_child`...),
    /// checked for what the runtime refuses but not listed in `STEPS`.
    pub is_step: bool,
    /// The method called: `step`, `sleep`, `wait_for_event`...
    pub method: String,
    /// The step whose closure holds this call, which the runtime refuses
    /// every time (`Error::NestedStep`).
    pub in_step: Option<String>,
    /// The arms of `if`/`match` it sits in: `(construct, arm)` pairs, each
    /// construct numbered in the order met. Two calls in different arms of
    /// one construct never both run. An arm that always leaves (returns,
    /// breaks, panics) has [`LEAVES`] set; the code after a construct
    /// with such an arm is its arm [`AFTER`], which never runs after one.
    pub arms: Vec<(u32, u32)>,
}

/// Set on the number of an arm that always leaves.
pub(crate) const LEAVES: u32 = 1 << 31;

/// The arm of the code after a construct one of whose arms always leaves.
pub(crate) const AFTER: u32 = u32::MAX;

/// An arm's number, marked when it always leaves.
fn arm(n: u32, leaves: bool) -> u32 {
    if leaves {
        n | LEAVES
    } else {
        n
    }
}

impl StepCall {
    /// Whether `self` and `other` sit in different arms of one `if` or
    /// `match`, or one in an arm that always leaves and the other after
    /// that construct, so that at most one of them runs.
    pub(crate) fn excludes(&self, other: &StepCall) -> bool {
        let apart = |a: u32, b: u32| match (a == AFTER, b == AFTER) {
            (false, false) => a != b,
            (true, false) => b & LEAVES != 0,
            (false, true) => a & LEAVES != 0,
            (true, true) => false,
        };
        self.arms.iter().any(|&(construct, a)| {
            other
                .arms
                .iter()
                .any(|&(c, b)| c == construct && apart(a, b))
        })
    }
}

/// The `ctx` methods whose first argument is a step name, besides `step`
/// and `step_with`.
const NAMED_METHODS: [&str; 18] = [
    "now",
    "sleep",
    "sleep_until",
    "set_timeout",
    "wait_for_event",
    "start_child",
    "start_child_with",
    "run_child",
    "run_child_with",
    "send_event_to",
    "map",
    "map_with",
    "for_each",
    "for_each_with",
    "batch",
    "batch_with",
    "call_tool",
    "call_tool_with",
];

/// The methods whose closure runs once per item, each item a step, and the
/// position of their items argument, which the handler builds outside.
fn items_arg(method: &str) -> Option<usize> {
    match method {
        "map" | "for_each" | "batch" => Some(1),
        "map_with" | "for_each_with" | "batch_with" => Some(2),
        _ => None,
    }
}

impl<'a> Workflow<'a> {
    /// Builds the model, recording every problem in `errors`. Returns a model
    /// even when there are errors, with defaults in place of rejected values,
    /// so the expansion can still declare the struct and keep follow-on
    /// errors ("cannot find type `ProcessOrder`") out of the output.
    pub(crate) fn from_syn(args: &Args, func: &'a ItemFn, errors: &mut Errors) -> Workflow<'a> {
        let fn_name = func.sig.ident.to_string();
        let fn_name = fn_name.strip_prefix("r#").unwrap_or(&fn_name).to_owned();

        let name = match &args.name {
            Some(lit) => {
                let name = lit.value();
                errors.ok(validate::workflow_name(&name, lit.span(), false));
                name
            }
            None => {
                errors.ok(validate::workflow_name(
                    &fn_name,
                    func.sig.ident.span(),
                    true,
                ));
                fn_name.clone()
            }
        };

        // The attribute being expanded is no longer among them: another
        // one would declare a second struct of the same name, reported by
        // rustc as a clash of items the user never wrote.
        for attr in &func.attrs {
            if is_workflow_attr(attr) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "a second `#[workflow]` on one function: a function is one workflow; \
                     to run it under another name too, write a second function that calls it",
                ));
            }
        }

        let description = match &args.description {
            Some(lit) => {
                let text = lit.value().trim().to_owned();
                if text.is_empty() {
                    errors.push(syn::Error::new(
                        lit.span(),
                        "an empty `description` leaves the workflow (and its AI tool) with none: \
                         write one, or remove `description` to use the doc comment",
                    ));
                }
                Description::text(text)
            }
            None => doc_comment(&func.attrs),
        };

        let schedule = args.schedule.as_ref().map(|lit| {
            errors.ok(validate::cron(lit));
            lit.value()
        });

        let timezone = match &args.timezone {
            Some(lit) => {
                if let Some(ok) = errors.ok(validate::timezone(lit)) {
                    if args.schedule.is_none() {
                        errors.push(syn::Error::new(
                            lit.span(),
                            "`timezone` only applies to a `schedule`, and this workflow has none: \
                             add a `schedule` or remove the `timezone`",
                        ));
                    }
                    ok
                } else {
                    lit.value()
                }
            }
            None => "UTC".to_owned(),
        };

        let catch_up = match &args.catch_up {
            Some(lit) => {
                let value = errors.ok(validate::catch_up(lit));
                if value.is_some() && args.schedule.is_none() {
                    errors.push(syn::Error::new(
                        lit.span(),
                        "`catch_up` only applies to a `schedule`, and this workflow has none: \
                         add a `schedule` or remove the `catch_up`",
                    ));
                }
                value.unwrap_or(CatchUp::Latest)
            }
            None => CatchUp::Latest,
        };

        let timeout = match &args.timeout {
            Some(lit) => errors.ok(validate::timeout(lit)).unwrap_or(DEFAULT_TIMEOUT),
            None => DEFAULT_TIMEOUT,
        };

        let retries = args
            .retries
            .as_ref()
            .and_then(|lit| errors.ok(validate::retries(lit)));

        let backoff = args.backoff.as_ref().map(|b| validate::backoff(b, errors));
        let jitter = args
            .jitter
            .as_ref()
            .and_then(|n| errors.ok(validate::jitter(n)));
        // Like `timezone` without a `schedule`: a setting that cannot take
        // effect is a mistake to point at, not to ignore.
        if retries == Some(1) {
            let useless = |key: &str| {
                format!(
                    "`{key}` has no effect with `retries = 1`: a step with one attempt never \
                     waits to retry; remove `{key}` or allow more attempts"
                )
            };
            if let Some(b) = &args.backoff {
                errors.push(syn::Error::new(b.span, useless("backoff")));
            }
            if let Some(n) = &args.jitter {
                errors.push(syn::Error::new_spanned(&n.tokens, useless("jitter")));
            }
        }

        let mut calls = collect_steps(func);
        for err in validate::invalid_step_names(&calls) {
            errors.push(err);
        }
        // Every named call shares one set of keys with the steps: a wait
        // named like a step would replay the step's record.
        for err in validate::duplicate_steps(&calls) {
            errors.push(err);
        }
        for err in validate::nested_calls(&calls) {
            errors.push(err);
        }
        calls.retain(|call| call.is_step);
        let mut steps: Vec<String> = Vec::new();
        for call in calls {
            if !steps.contains(&call.name) {
                steps.push(call.name);
            }
        }

        let mut struct_ident = struct_ident(&fn_name, func.sig.ident.span(), errors);

        let (handler, partial) = handler(func, errors);
        if let (Some(ident), Some(handler)) = (&struct_ident, &handler) {
            if let Some(clash) = type_named(ident, handler) {
                errors.push(syn::Error::new(
                    clash,
                    format!(
                        "`{ident}` is both this type and the workflow struct `#[workflow]` \
                         generates from `fn {fn_name}` (its name in PascalCase): rename the \
                         function or the type"
                    ),
                ));
                // Generating it anyway would add "defined multiple times"
                // and errors inside the generated code to this one.
                struct_ident = None;
            }
        }

        Workflow {
            krate: args
                .krate
                .clone()
                .unwrap_or_else(|| syn::parse_quote!(::workflow)),
            func,
            struct_ident,
            name,
            description,
            schedule,
            timezone,
            timeout,
            catch_up,
            retries,
            backoff,
            jitter,
            steps,
            handler,
            partial,
            is_method: func.sig.receiver().is_some(),
            cfgs: func
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("cfg"))
                .collect(),
            deprecated: func
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("deprecated"))
                .collect(),
        }
    }
}

/// The types and traits of `workflow::prelude`, with every feature: most
/// workflow modules import them all, and a struct of one of these names
/// would hide it there (`fn execute` would make `Execute::new` an error
/// that rustc lays at the user's code).
const WORKFLOW_PRELUDE: [&str; 29] = [
    "Backoff",
    "BoxError",
    "CatchUp",
    "ChildOptions",
    "ConsoleExt",
    "Ctx",
    "Durability",
    "Engine",
    "EngineExt",
    "EventSent",
    "Execute",
    "ExecuteExt",
    "Instance",
    "InstanceId",
    "ManualClock",
    "MemoryStore",
    "Model",
    "NonRetryable",
    "OpenAiCompatible",
    "Query",
    "RetryAfter",
    "StartOptions",
    "Status",
    "StepOptions",
    "Timeout",
    "Tool",
    "Toolbox",
    "WaitingFor",
    "Workflow",
];

/// Names every module sees from the std prelude: a struct of one of these
/// names would hide it there (`fn send` would turn every `Send` bound into
/// an error, `fn ok` every `Ok(..)`).
const STD_PRELUDE: [&str; 40] = [
    "AsMut",
    "AsRef",
    "Box",
    "Clone",
    "Copy",
    "Default",
    "DoubleEndedIterator",
    "Drop",
    "Eq",
    "Err",
    "ExactSizeIterator",
    "Extend",
    "Fn",
    "FnMut",
    "FnOnce",
    "From",
    "FromIterator",
    "Future",
    "Into",
    "IntoFuture",
    "IntoIterator",
    "Iterator",
    "None",
    "Ok",
    "Option",
    "Ord",
    "PartialEq",
    "PartialOrd",
    "Result",
    "Send",
    "Sized",
    "Some",
    "String",
    "Sync",
    "ToOwned",
    "ToString",
    "TryFrom",
    "TryInto",
    "Unpin",
    "Vec",
];

/// The PascalCase struct name for a function, or an error at the function's
/// name when that is not a usable, distinct identifier (`fn self_` would
/// give the keyword `Self`, `fn Flow` would give `Flow` itself) or would
/// hide a name of the std prelude or of `workflow::prelude`.
fn struct_ident(fn_name: &str, span: Span, errors: &mut Errors) -> Option<Ident> {
    let pascal = pascal_case(fn_name);
    let hides;
    let problem = match syn::parse_str::<Ident>(&pascal) {
        Ok(_) if pascal == fn_name => {
            "which would clash with the function itself; name the function in snake_case"
        }
        Ok(_) if STD_PRELUDE.contains(&pascal.as_str()) => {
            hides = format!(
                "which would hide the std prelude's `{pascal}` in this module; rename the \
                 function (`name = \"{fn_name}\"` keeps the workflow's name)"
            );
            &hides
        }
        // The names `workflow::prelude::*` brings: a struct `Workflow`
        // would hide the trait (`X::start(..)` no longer found), a struct
        // `Execute` the model loop's builder (`Execute::new` no longer
        // found), and rustc would blame the code that uses them.
        Ok(_) if WORKFLOW_PRELUDE.contains(&pascal.as_str()) => {
            hides = format!(
                "which would hide `{pascal}` of `workflow::prelude` in this module; rename \
                 the function (`name = \"{fn_name}\"` keeps the workflow's name)"
            );
            &hides
        }
        Ok(mut ident) => {
            ident.set_span(span);
            return Some(ident);
        }
        Err(_) => "which is not a usable identifier; rename the function",
    };
    errors.push(syn::Error::new(
        span,
        format!(
            "the generated workflow struct would be named `{pascal}` after this function, {problem}"
        ),
    ));
    None
}

/// Where the handler's signature names a type spelled like `ident` in this
/// module (`Triage`, `self::Triage`, or inside `Vec<Triage>`), which the
/// generated struct would clash with.
fn type_named(ident: &Ident, handler: &Handler<'_>) -> Option<Span> {
    struct Find<'i> {
        ident: &'i Ident,
        found: Option<Span>,
    }
    impl<'ast> Visit<'ast> for Find<'_> {
        fn visit_type_path(&mut self, ty: &'ast syn::TypePath) {
            let segments = &ty.path.segments;
            let local = ty.qself.is_none()
                && ty.path.leading_colon.is_none()
                && match segments.len() {
                    1 => true,
                    2 => segments[0].ident == "self",
                    _ => false,
                };
            let last = segments.last().map(|s| &s.ident);
            if self.found.is_none() && local && last == Some(self.ident) {
                self.found = Some(last.map_or_else(Span::call_site, Ident::span));
            }
            visit::visit_type_path(self, ty);
        }
    }
    let mut find = Find { ident, found: None };
    find.visit_type(handler.ctx);
    find.visit_type(handler.input);
    find.visit_type(handler.output);
    if let Some(error) = handler.error {
        find.visit_type(error);
    }
    find.found
}

/// A workflow's description: the `description` key, or its doc comment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Description {
    /// In order: text the macro reads, and docs it cannot
    /// (`#[doc = include_str!(..)]`), which the compiler reads for it.
    pieces: Vec<DocPiece>,
}

#[derive(Debug, Clone, PartialEq)]
enum DocPiece {
    Text(String),
    Included(Box<Expr>),
}

impl Description {
    pub(crate) fn text(text: String) -> Self {
        let pieces = if text.is_empty() {
            Vec::new()
        } else {
            vec![DocPiece::Text(text)]
        };
        Description { pieces }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The description after `prefix`, as a `&'static str` expression: a
    /// literal, or `concat!` of the text and the included docs.
    pub(crate) fn to_tokens_after(&self, prefix: &str) -> proc_macro2::TokenStream {
        let mut parts = Vec::new();
        let mut text = prefix.to_owned();
        for (n, piece) in self.pieces.iter().enumerate() {
            if n > 0 {
                text.push('\n');
            }
            match piece {
                DocPiece::Text(t) => text.push_str(t),
                DocPiece::Included(expr) => {
                    parts.push(quote::quote!(#text));
                    parts.push(expr.to_token_stream());
                    text = String::new();
                }
            }
        }
        if parts.is_empty() {
            return quote::quote!(#text);
        }
        if !text.is_empty() {
            parts.push(quote::quote!(#text));
        }
        quote::quote!(::core::concat!(#(#parts),*))
    }

    /// The text alone, for tests: included docs as `{..}`.
    #[cfg(test)]
    pub(crate) fn plain(&self) -> String {
        let pieces: Vec<String> = self
            .pieces
            .iter()
            .map(|piece| match piece {
                DocPiece::Text(t) => t.clone(),
                DocPiece::Included(_) => "{..}".to_owned(),
            })
            .collect();
        pieces.join("\n")
    }
}

/// The doc comment as a description: each line trimmed, lines joined with
/// `\n`, surrounding blank lines dropped. In a block comment (`/** .. */`)
/// whose every non-blank line starts with `*` (but the first, the one
/// after `/**`, which may not), that `*` and one space after it go, as
/// rustdoc drops them. The text ends before its first heading or code
/// fence: `# Examples` with Rust code, `# Errors` about the Rust API, are
/// for the crate's readers, not for a model reading the tool's
/// description on every request. `#[doc = include_str!(..)]` and other
/// docs that are not a literal are kept whole, where they stand: their
/// text is unknown here.
pub(crate) fn doc_comment(attrs: &[Attribute]) -> Description {
    let heading = |line: &str| {
        let rest = line.trim_start_matches('#');
        (1..=6).contains(&(line.len() - rest.len())) && (rest.is_empty() || rest.starts_with(' '))
    };
    let mut pieces = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    // The lines read since the last included doc, as one piece.
    let flush = |pieces: &mut Vec<DocPiece>, lines: &mut Vec<String>| {
        let text = lines.join("\n").trim().to_owned();
        if !text.is_empty() {
            pieces.push(DocPiece::Text(text));
        }
        lines.clear();
    };
    'attrs: for attr in attrs {
        let Meta::NameValue(nv) = &attr.meta else {
            continue;
        };
        if !nv.path.is_ident("doc") {
            continue;
        }
        let Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) = &nv.value
        else {
            flush(&mut pieces, &mut lines);
            pieces.push(DocPiece::Included(Box::new(nv.value.clone())));
            continue;
        };
        let value = lit.value();
        let mut block: Vec<&str> = value.split('\n').map(str::trim).collect();
        // Only a block comment spans lines in one attribute; a `///`
        // line starting with `*` is a Markdown list item, kept.
        let starred = block.len() > 1
            && block[1..]
                .iter()
                .filter(|line| !line.is_empty())
                .all(|line| line.starts_with('*'));
        if starred {
            for line in &mut block {
                if let Some(rest) = line.strip_prefix('*') {
                    *line = rest.strip_prefix(' ').unwrap_or(rest);
                }
            }
        }
        for line in block {
            let line = line.trim();
            // A heading before any text is a title (`# Refund`), skipped;
            // one after it starts the detailed sections, which are left out.
            let nothing_yet = pieces.is_empty() && lines.iter().all(String::is_empty);
            if heading(line) && nothing_yet {
                continue;
            }
            if line.starts_with("```") || line.starts_with("~~~") || heading(line) {
                break 'attrs;
            }
            lines.push(line.to_owned());
        }
    }
    flush(&mut pieces, &mut lines);
    Description { pieces }
}

/// Whether `attr` is `#[workflow(..)]` (or `#[workflow::workflow(..)]`).
fn is_workflow_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "workflow")
}

/// Whether another `#[workflow]` is left on the function.
pub(crate) fn has_workflow_attr(attrs: &[Attribute]) -> bool {
    attrs.iter().any(is_workflow_attr)
}

/// `process_order` -> `ProcessOrder`. Characters after the first of each
/// `_`-separated word are kept as they are, so `fetchOrder` -> `FetchOrder`.
pub(crate) fn pascal_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    for word in snake.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    // `_2fa` would give `2fa`, not an identifier.
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Reads the handler's types, recording why the signature does not fit the
/// `async fn(ctx: Ctx<S>, input: I) -> Result<O, E>` shape. Returns `None`
/// if the generated impl could not call the function as written.
fn handler<'a>(
    func: &'a ItemFn,
    errors: &mut Errors,
) -> (Option<Handler<'a>>, Vec<(&'a Type, TypeRole)>) {
    let sig = &func.sig;
    let qualifier_errors = qualifiers(sig);
    let callable = qualifier_errors.is_empty();
    for err in qualifier_errors {
        errors.push(err);
    }
    // Every part is checked even when an earlier one failed, so all
    // mistakes show up in one build.
    let params = parameters(sig);
    let result = return_types(sig);
    let ((state, input), (output, error, result_span, output_projected)) = match (params, result) {
        (Ok(params), Ok(result)) => (params, result),
        (params, result) => {
            let mut partial = Vec::new();
            if let Ok((_, input)) = &params {
                partial.push((*input, TypeRole::Input));
            }
            if let Ok((output, error, _, projected)) = &result {
                if !projected {
                    partial.push((*output, TypeRole::Output));
                }
                partial.extend(error.map(|error| (error, TypeRole::Error)));
            }
            for err in params.err().into_iter().chain(result.err()).flatten() {
                errors.push(err);
            }
            return (None, partial);
        }
    };
    let handler = Handler {
        state: state.0,
        ctx: state.1,
        input,
        output,
        output_projected,
        error,
        result_span,
        callable,
    };
    (Some(handler), Vec::new())
}

/// What the function is declared as, beyond its parameters and return
/// type: it must be a plain, non-generic `async fn`.
fn qualifiers(sig: &Signature) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "a workflow handler must be an `async fn`: write `async fn`",
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "a workflow handler cannot be a `const fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "a workflow handler cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a workflow handler cannot have an `extern` ABI",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let generics: &dyn quote::ToTokens = if sig.generics.params.is_empty() {
            &sig.generics.where_clause
        } else {
            &sig.generics
        };
        errors.push(syn::Error::new_spanned(
            generics,
            "a workflow handler cannot be generic: its input, output and state \
             types are persisted and described by schema, so they must be concrete",
        ));
    }
    if let Some(receiver) = sig.receiver() {
        errors.push(syn::Error::new_spanned(
            receiver,
            "`#[workflow]` goes on a free function, not a method: move it out of \
             the `impl` block and drop `self`; it takes `(ctx: Ctx<State>, input: Input)`",
        ));
    }
    errors
}

/// The state type (from `Ctx<S>`) and the input type, from exactly two
/// typed parameters, `self` aside (reported by [`qualifiers`]).
/// The state (see [`Handler::state`]) and the context's type, and the input's type.
type Parameters<'a> = ((Option<Type>, &'a Type), &'a Type);

fn parameters(sig: &Signature) -> Result<Parameters<'_>, Vec<syn::Error>> {
    let typed: Vec<&PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(pat),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let expected = "a workflow handler takes exactly two parameters, \
                    `(ctx: Ctx<State>, input: Input)`";
    let (ctx, input) = match typed[..] {
        [ctx, input] => (ctx, input),
        [_, _, extra, ..] => {
            return Err(vec![syn::Error::new_spanned(
                extra,
                format!(
                    "{expected}, found {}; put the extra values in the input type",
                    typed.len()
                ),
            )]);
        }
        _ => {
            let found = match typed.len() {
                0 => "none".to_owned(),
                n => n.to_string(),
            };
            return Err(vec![syn::Error::new(
                sig.paren_token.span.join(),
                format!("{expected}, found {found}; use `()` as the input type if there is none"),
            )]);
        }
    };

    let mut errors = Vec::new();
    let input_is_ctx = ctx_state(&input.ty, false).is_ok();
    let state = match ctx_state(&ctx.ty, !input_is_ctx) {
        Ok(state) => Some((state, &*ctx.ty)),
        Err(why) => {
            let why = if input_is_ctx {
                "the context comes first: write `(ctx: Ctx<State>, input: Input)`".to_owned()
            } else {
                why
            };
            errors.push(syn::Error::new_spanned(&ctx.ty, why));
            None
        }
    };
    if let Type::ImplTrait(_) = &*input.ty {
        errors.push(syn::Error::new_spanned(
            &input.ty,
            "the workflow input must be a concrete type, not `impl Trait`",
        ));
    } else if let Type::Reference(reference) = peel_type(&input.ty) {
        let owned = match &*reference.elem {
            Type::Path(p) if p.path.is_ident("str") => "String".to_owned(),
            elem => quote::quote!(#elem).to_string(),
        };
        errors.push(syn::Error::new_spanned(
            &input.ty,
            format!(
                "take the workflow input by value (`{owned}`): it is stored as JSON and read \
                 back for every run, so it cannot borrow"
            ),
        ));
    } else if input_is_ctx && state.is_some() {
        errors.push(syn::Error::new_spanned(
            &input.ty,
            "the second parameter is the workflow input, not a second `Ctx`",
        ));
    } else if let Some(err) = unfit(&input.ty, "input", "read back for every run") {
        errors.push(err);
    }
    if let Some((Some(state), _)) = &state {
        errors.extend(unfit(state, "state", "saved with each step"));
    }
    match state {
        Some(state) if errors.is_empty() => Ok((state, &*input.ty)),
        _ => Err(errors),
    }
}

/// `O`, `E`, the span of `Result` in the return type, and whether `O` is
/// the whole type, an alias to project (see [`result_types`]).
fn return_types(sig: &Signature) -> Result<(&Type, Option<&Type>, Span, bool), Vec<syn::Error>> {
    let message = "a workflow handler must return a `Result`, e.g. \
                   `-> workflow::Result<Output>` or `-> Result<Output, MyError>` \
                   (or an alias of one whose name ends in `Result`)";
    let types = match &sig.output {
        ReturnType::Default => Err(syn::Error::new(sig.paren_token.span.close(), message)),
        ReturnType::Type(_, ty) => {
            result_types(ty).ok_or_else(|| syn::Error::new_spanned(ty, message))
        }
    }
    .map_err(|err| vec![err])?;
    let (output, error, _, _) = types;
    let errors: Vec<syn::Error> = unfit(output, "output", "stored as JSON")
        .into_iter()
        .chain(error.and_then(|error| unfit(error, "error type", "turned into a `BoxError`")))
        .collect();
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(errors)
    }
}

/// Why a type the workflow persists cannot be named in its `Workflow` impl
/// as written, anywhere inside it (`Vec<impl Trait>`, `(&str, u32)`,
/// `Option<Cow<'a, str>>`): an `impl Trait` makes the function secretly
/// generic, and a borrow has no lifetime the impl could name. `what`
/// names the type, `why` says what happens to it. A `'static` borrow is
/// left to the trait checks, which name the missing `Deserialize`.
fn unfit(ty: &Type, what: &str, why: &str) -> Option<syn::Error> {
    /// The first unfit part, and whether it is an `impl Trait`.
    #[derive(Default)]
    struct Find(Option<(proc_macro2::TokenStream, bool)>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert((node.to_token_stream(), true));
        }
        fn visit_type_reference(&mut self, node: &'ast syn::TypeReference) {
            match &node.lifetime {
                Some(lifetime) if lifetime.ident == "static" => {}
                _ => {
                    self.0.get_or_insert((node.to_token_stream(), false));
                }
            }
            visit::visit_type_reference(self, node);
        }
        fn visit_lifetime(&mut self, node: &'ast syn::Lifetime) {
            if node.ident != "static" {
                self.0.get_or_insert((node.to_token_stream(), false));
            }
        }
        fn visit_type_path(&mut self, node: &'ast syn::TypePath) {
            // `Cow<str>` borrows through a lifetime left out, which rustc
            // would report inside the generated impl. (A bare `Cow` is a
            // type of the user's own: std's takes a type argument.)
            if let Some(last) = node.path.segments.last() {
                let elided = match &last.arguments {
                    PathArguments::AngleBracketed(args) => !args
                        .args
                        .iter()
                        .any(|a| matches!(a, GenericArgument::Lifetime(_))),
                    _ => false,
                };
                if last.ident == "Cow" && elided {
                    self.0.get_or_insert((node.to_token_stream(), false));
                }
            }
            visit::visit_type_path(self, node);
        }
        // A function's own parameters (`fn(&str)`, `dyn Fn(&str)`,
        // `for<'a> ..`) borrow nothing the type holds.
        fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
        fn visit_parenthesized_generic_arguments(
            &mut self,
            _: &'ast syn::ParenthesizedGenericArguments,
        ) {
        }
        fn visit_bound_lifetimes(&mut self, _: &'ast syn::BoundLifetimes) {}
    }
    let mut find = Find::default();
    find.visit_type(ty);
    let (part, impl_trait) = find.0?;
    Some(syn::Error::new_spanned(
        part,
        if impl_trait {
            format!("the workflow {what} must be a concrete type, not `impl Trait`")
        } else {
            format!(
                "the workflow {what} cannot borrow: it is {why}, so it must own its data \
                 (`String` for `&str` or `Cow<str>`, `Vec<T>` for `&[T]`)"
            )
        },
    ))
}

/// `S` of a `Ctx<S>` type (any path ending in `Ctx`), `None` for a bare
/// `Ctx`; otherwise why the type is not a context. With `alias_ok`, also
/// `None` for a path whose last segment ends in `Ctx` (`OrderCtx`,
/// `workflow::Ctx` imported `as WfCtx`): an alias of a `Ctx`,
/// which the expansion asks for its state (`HandlerCtx`), as for a bare
/// `Ctx`, and which a type that is no context does not answer.
fn ctx_state(ty: &Type, alias_ok: bool) -> Result<Option<Type>, String> {
    let not_ctx = || {
        "the first parameter must be the workflow context, `ctx: Ctx` or \
         `ctx: Ctx<State>` (or an alias of one whose name ends in `Ctx`)"
            .to_owned()
    };
    let ty = peel_type(ty);
    if let Type::Reference(reference) = ty {
        return if ctx_state(&reference.elem, alias_ok).is_ok() {
            Err("take the context by value: `ctx: Ctx<State>` (it is cheap to clone)".to_owned())
        } else {
            Err(not_ctx())
        };
    }
    let Type::Path(path) = ty else {
        return Err(not_ctx());
    };
    let Some(last) = path.path.segments.last() else {
        return Err(not_ctx());
    };
    if last.ident != "Ctx" {
        let name = last.ident.to_string();
        return if alias_ok && name.ends_with("Ctx") {
            Ok(None)
        } else {
            Err(not_ctx())
        };
    }
    match &last.arguments {
        PathArguments::None => Ok(None),
        PathArguments::AngleBracketed(args) => match args.args.iter().collect::<Vec<_>>()[..] {
            [GenericArgument::Type(state)] => Ok(Some(state.clone())),
            _ => {
                Err("`Ctx` takes one type argument, the workflow's state: `Ctx<State>`".to_owned())
            }
        },
        PathArguments::Parenthesized(_) => Err(not_ctx()),
    }
}

/// `O` and `E` of a return type whose last path segment is `Result` with
/// one or two type arguments, and the span of that `Result`. A path whose
/// last segment only ends in `Result` (`AppResult<Out>`, `anyhow::Result`
/// imported `as AResult`) is taken for an alias of one: the whole type
/// comes back as `O`, flagged, and the expansion asks it for its output
/// type (`HandlerReturn`), which a type that is no `Result` does not have.
fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>, Span, bool)> {
    let Type::Path(path) = peel_type(ty) else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return last
            .ident
            .to_string()
            .ends_with("Result")
            .then(|| (ty, None, last.ident.span(), true));
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match types[..] {
        [output] => Some((output, None, last.ident.span(), false)),
        [output, error] => Some((output, Some(error), last.ident.span(), false)),
        _ => None,
    }
}

fn peel_type(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel_type(&group.elem),
        Type::Paren(paren) => peel_type(&paren.elem),
        other => other,
    }
}

/// The literal-named step calls in the function body (and the other `ctx`
/// calls that take a step name), in source order. Only calls on the
/// context count: the first parameter, or a local bound to it
/// (`let c = ctx.clone();`); `engine.call_tool("..")` or
/// `client.batch("..")` in a step's closure are other methods of the
/// same name.
pub(crate) fn collect_steps(func: &ItemFn) -> Vec<StepCall> {
    let ctx = match func.sig.inputs.first() {
        Some(FnArg::Typed(PatType { pat, .. })) => match &**pat {
            syn::Pat::Ident(ident) => Some(ident.ident.to_string()),
            // `_`: no call can name it.
            _ => None,
        },
        // No parameters, or `self` (both refused elsewhere): the usual name.
        _ => Some("ctx".to_owned()),
    };
    let mut visitor = StepVisitor {
        ctx_names: ctx.into_iter().collect(),
        ..StepVisitor::default()
    };
    visitor.visit_block(&func.block);
    visitor.calls
}

#[derive(Default)]
struct StepVisitor {
    /// The names the context goes by: its parameter, and locals bound to it.
    ctx_names: Vec<String>,
    loop_depth: usize,
    calls: Vec<StepCall>,
    /// The `if`/`match` arms being visited, outermost first.
    arms: Vec<(u32, u32)>,
    constructs: u32,
    /// The steps whose closures are being visited, outermost first.
    steps: Vec<String>,
    /// The constructs of the `if` chain, `match` or `let .. else` visited
    /// last that have an arm that always leaves: each link of an `else if`
    /// chain is a construct of its own, nested in the one before's `else`.
    last_leaving: Vec<u32>,
}

impl StepVisitor {
    fn in_loop(&mut self, f: impl FnOnce(&mut Self)) {
        self.loop_depth += 1;
        f(self);
        self.loop_depth -= 1;
    }

    fn in_arm(&mut self, construct: u32, arm: u32, f: impl FnOnce(&mut Self)) {
        self.arms.push((construct, arm));
        f(self);
        self.arms.pop();
    }

    fn construct(&mut self) -> u32 {
        self.constructs += 1;
        self.constructs
    }

    /// The construct of `stmt`, just visited, when the code after it runs
    /// only if one of the construct's arms did not: an `if` or `match` with
    /// an arm that ends the function, the loop or the iteration, or a
    /// `let .. else`.
    fn diverged_before(&self, stmt: &syn::Stmt) -> Vec<u32> {
        match stmt {
            syn::Stmt::Local(syn::Local {
                init:
                    Some(syn::LocalInit {
                        diverge: Some(_), ..
                    }),
                ..
            })
            | syn::Stmt::Expr(Expr::If(_) | Expr::Match(_), _) => self.last_leaving.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether `expr` is the context: one of its names, borrowed,
    /// dereferenced or cloned (`ctx`, `&ctx`, `ctx.clone()`), or a field of
    /// that name (`job.ctx`).
    fn is_ctx(&self, expr: &Expr) -> bool {
        let named = |ident: &Ident| self.ctx_names.iter().any(|name| ident == name);
        match peel_expr(expr) {
            Expr::Path(path) => path.path.get_ident().is_some_and(named),
            Expr::Field(syn::ExprField {
                member: syn::Member::Named(ident),
                ..
            }) => named(ident),
            Expr::Reference(reference) => self.is_ctx(&reference.expr),
            Expr::Unary(syn::ExprUnary {
                op: syn::UnOp::Deref(_),
                expr,
                ..
            }) => self.is_ctx(expr),
            Expr::MethodCall(call) if call.method == "clone" && call.args.is_empty() => {
                self.is_ctx(&call.receiver)
            }
            _ => false,
        }
    }
}

impl<'ast> Visit<'ast> for StepVisitor {
    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let is_step = call.method == "step" || call.method == "step_with";
        let mut step = None;
        let named = is_step || NAMED_METHODS.iter().any(|m| call.method == m);
        if named && self.is_ctx(&call.receiver) {
            if let Some(Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            })) = call.args.first().map(peel_expr)
            {
                self.calls.push(StepCall {
                    name: lit.value(),
                    span: lit.span(),
                    in_loop: self.loop_depth > 0,
                    is_step,
                    method: call.method.to_string(),
                    in_step: self.steps.last().cloned(),
                    arms: self.arms.clone(),
                });
                // The items of `map`, `for_each` and `batch` run as steps
                // too: `ctx` calls in their closures are refused as well.
                let runs_as_step = is_step || items_arg(&call.method.to_string()).is_some();
                step = runs_as_step.then(|| lit.value());
            }
        }
        // What a step's call holds runs inside the step: its closure,
        // however it is built (`{ let c = c.clone(); move || .. }`). Not
        // the receiver, nor the items of `map`, `for_each` and `batch`
        // (their second argument), which the handler builds first, from a
        // recorded step as `Ctx::map` advises.
        let Some(step) = step else {
            visit::visit_expr_method_call(self, call);
            return;
        };
        for attr in &call.attrs {
            self.visit_attribute(attr);
        }
        self.visit_expr(&call.receiver);
        let items = items_arg(&call.method.to_string());
        for (n, arg) in call.args.iter().enumerate() {
            if Some(n) == items {
                self.visit_expr(arg);
            } else {
                self.steps.push(step.clone());
                self.visit_expr(arg);
                self.steps.pop();
            }
        }
    }

    fn visit_expr_for_loop(&mut self, expr: &'ast syn::ExprForLoop) {
        // The iterated expression runs once; only the body repeats.
        for attr in &expr.attrs {
            self.visit_attribute(attr);
        }
        self.visit_expr(&expr.expr);
        self.in_loop(|v| {
            v.visit_pat(&expr.pat);
            v.visit_block(&expr.body);
        });
    }

    fn visit_expr_if(&mut self, expr: &'ast syn::ExprIf) {
        for attr in &expr.attrs {
            self.visit_attribute(attr);
        }
        self.visit_expr(&expr.cond);
        let construct = self.construct();
        let leaves_then = diverges(&expr.then_branch);
        self.in_arm(construct, arm(0, leaves_then), |v| {
            v.visit_block(&expr.then_branch)
        });
        // Each link of an `else if` chain is a construct nested in the
        // `else` of the one before: its condition runs whenever the
        // branches before were not taken, as the links after it do. The
        // code after the chain runs only when no leaving branch did,
        // wherever in the chain that branch is.
        let mut chain = Vec::new();
        let mut leaving = leaves_then;
        if let Some((_, otherwise)) = &expr.else_branch {
            let leaves = leaves(otherwise);
            leaving |= leaves;
            self.in_arm(construct, arm(1, leaves), |v| v.visit_expr(otherwise));
            if let Expr::If(_) = &**otherwise {
                chain = std::mem::take(&mut self.last_leaving);
            }
        }
        if leaving {
            chain.push(construct);
        }
        self.last_leaving = chain;
    }

    fn visit_expr_match(&mut self, expr: &'ast syn::ExprMatch) {
        for attr in &expr.attrs {
            self.visit_attribute(attr);
        }
        self.visit_expr(&expr.expr);
        let construct = self.construct();
        let mut leaving = false;
        for (n, a) in (0u32..).zip(&expr.arms) {
            let leaves = leaves(&a.body);
            leaving |= leaves;
            self.in_arm(construct, arm(n, leaves), |v| v.visit_arm(a));
        }
        self.last_leaving = leaving.then_some(construct).into_iter().collect();
    }

    fn visit_expr_while(&mut self, expr: &'ast syn::ExprWhile) {
        self.in_loop(|v| visit::visit_expr_while(v, expr));
    }

    fn visit_expr_loop(&mut self, expr: &'ast syn::ExprLoop) {
        self.in_loop(|v| visit::visit_expr_loop(v, expr));
    }

    fn visit_block(&mut self, block: &'ast syn::Block) {
        // After `if cond { ..; return x; }`, a `match` with an arm that
        // returns, or `let .. else { .. }`, the rest of the block runs only
        // when that arm did not: it may reuse the arm's names.
        let depth = self.arms.len();
        for stmt in &block.stmts {
            self.visit_stmt(stmt);
            for construct in self.diverged_before(stmt) {
                self.arms.push((construct, AFTER));
            }
        }
        self.arms.truncate(depth);
    }

    fn visit_local(&mut self, local: &'ast syn::Local) {
        for attr in &local.attrs {
            self.visit_attribute(attr);
        }
        self.visit_pat(&local.pat);
        if let Some(init) = &local.init {
            self.visit_expr(&init.expr);
            if let Some((_, otherwise)) = &init.diverge {
                // The `else` always leaves (Rust requires it); the rest of
                // the block comes after it (see `visit_block`).
                let construct = self.construct();
                self.in_arm(construct, arm(0, true), |v| v.visit_expr(otherwise));
                self.last_leaving = vec![construct];
            }
        }
        // `let c = ctx.clone();`, `let c = &ctx;`: another name for it.
        if let (syn::Pat::Ident(ident), Some(init)) = (&local.pat, &local.init) {
            if init.diverge.is_none() && self.is_ctx(&init.expr) {
                self.ctx_names.push(ident.ident.to_string());
            }
        }
    }

    fn visit_expr_closure(&mut self, expr: &'ast syn::ExprClosure) {
        // A closure may run any number of times (`.map(|x| ...)`).
        self.in_loop(|v| visit::visit_expr_closure(v, expr));
    }

    fn visit_item(&mut self, _item: &'ast syn::Item) {
        // Nested items are separate functions, not this workflow's body.
    }

    fn visit_macro(&mut self, mac: &'ast Macro) {
        // `tokio::join!(ctx.step(..), ctx.step(..))`, `vec![..]`: bodies that
        // read as comma-separated expressions are searched too.
        if let Ok(exprs) = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            for expr in &exprs {
                self.visit_expr(expr);
            }
        }
    }
}

/// Whether `block` always leaves: its last statement returns, breaks,
/// continues or panics.
fn diverges(block: &syn::Block) -> bool {
    match block.stmts.last() {
        Some(syn::Stmt::Expr(expr, _)) => leaves(expr),
        Some(syn::Stmt::Macro(mac)) => panics(&mac.mac),
        _ => false,
    }
}

/// Whether the arm `expr` (a block, or an `if` or `match` arm's
/// expression) always leaves.
fn leaves(expr: &Expr) -> bool {
    match peel_expr(expr) {
        // Not a labeled block: its `break 'label` goes on after it.
        Expr::Block(block) if block.label.is_none() => diverges(&block.block),
        Expr::Return(_) | Expr::Break(_) | Expr::Continue(_) => true,
        Expr::Macro(mac) => panics(&mac.mac),
        _ => false,
    }
}

/// Whether `mac` always leaves: it panics, or returns an error as
/// anyhow's and eyre's `bail!` do.
fn panics(mac: &Macro) -> bool {
    mac.path.segments.last().is_some_and(|s| {
        ["panic", "unreachable", "todo", "unimplemented", "bail"]
            .contains(&s.ident.to_string().as_str())
    })
}

fn peel_expr(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => peel_expr(&group.expr),
        Expr::Paren(paren) => peel_expr(&paren.expr),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};

    fn func(tokens: proc_macro2::TokenStream) -> ItemFn {
        syn::parse2(tokens).expect("test function parses")
    }

    fn names(calls: &[StepCall]) -> Vec<(&str, bool)> {
        calls.iter().map(|c| (c.name.as_str(), c.in_loop)).collect()
    }

    #[test]
    fn pascal_cases_function_names() {
        assert_eq!(pascal_case("process_order"), "ProcessOrder");
        assert_eq!(pascal_case("processOrder"), "ProcessOrder");
        assert_eq!(pascal_case("nightly"), "Nightly");
        assert_eq!(pascal_case("_private_flow"), "PrivateFlow");
        assert_eq!(pascal_case("step_2_go"), "Step2Go");
        assert_eq!(pascal_case("a__b"), "AB");
        assert_eq!(pascal_case("_2fa"), "_2fa");
        assert_eq!(pascal_case("étape_une"), "ÉtapeUne");
    }

    /// Methods of other receivers that share a name with a `ctx` method
    /// (`Engine::call_tool`, a client's `batch`) are not steps: before,
    /// they were refused as nested or duplicate step calls.
    #[test]
    fn only_calls_on_the_context_count() {
        let f = func(quote! {
            async fn f(wf: Ctx, input: I) -> Result<()> {
                wf.step("lookup", || async { engine.call_tool("crm", args).await }).await?;
                client.batch("users", 10).await?;
                cache.map("users", f);
                let c = wf.clone();
                let r = &wf;
                c.sleep("nap", d).await?;
                r.step("via-ref", f).await?;
                (*r).step("deref", f).await?;
                wf.clone().step("cloned", f).await?;
                ctx.step("not-the-param", f).await?;
                engine.call_tool("crm", args).await?;
            }
        });
        let calls = collect_steps(&f);
        let found: Vec<_> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(found, ["lookup", "nap", "via-ref", "deref", "cloned"]);
        assert!(calls.iter().all(|c| c.in_step.is_none()));
        let unnamed = func(quote! {
            async fn f(_: Ctx, input: I) -> Result<()> { ctx.step("x", f).await }
        });
        assert!(collect_steps(&unnamed).is_empty());
    }

    #[test]
    fn collects_steps_in_source_order_with_loop_context() {
        let f = func(quote! {
            async fn f(ctx: Ctx, input: I) -> Result<()> {
                let order = ctx.step("fetch", || async { Ok(1) }).await?;
                for item in ctx.step("list", || async { Ok(vec![]) }).await? {
                    ctx.step("charge", || async { Ok(()) }).await?;
                }
                while x { ctx.step_with("poll", opts, || async { Ok(()) }).await?; }
                loop { self.ctx.step("tick", f).await?; break; }
                items.iter().map(|i| ctx.step("mapped", f));
                tokio::join!(ctx.step("left", a), ctx.step("right", b));
                ctx.step(name, f).await?;
                ctx.other("not-a-step", f).await?;
                fn nested() { ctx.step("nested", f); }
                ctx.sleep("cool-down", d).await?;
                let _: Ev = ctx.wait_for_event("approved", None).await?;
                ctx.run_child::<Child>("child", input).await?;
                ctx.start_child_with::<Child>("later", input, options).await?;
                ctx.call_tool("lookup", &tools, "crm", args).await?;
                ctx.step(("paren"), f).await
            }
        });
        let calls = collect_steps(&f);
        assert_eq!(
            names(&calls),
            [
                ("fetch", false),
                ("list", false),
                ("charge", true),
                ("poll", true),
                ("tick", true),
                ("mapped", true),
                ("left", false),
                ("right", false),
                ("cool-down", false),
                ("approved", false),
                ("child", false),
                ("later", false),
                ("lookup", false),
                ("paren", false),
            ]
        );
        let steps: Vec<&str> = calls
            .iter()
            .filter(|c| c.is_step)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            steps,
            ["fetch", "list", "charge", "poll", "tick", "mapped", "left", "right", "paren"]
        );
    }

    #[test]
    fn reads_doc_comments() {
        let f = func(quote! {
            ///   Process a new order.
            ///
            ///   Charges the card.
            #[doc = include_str!("x.md")]
            /// More.
            async fn f() {}
        });
        assert_eq!(
            doc_comment(&f.attrs).plain(),
            "Process a new order.\n\nCharges the card.\n{..}\nMore."
        );
        assert!(doc_comment(&[]).is_empty());
    }

    #[test]
    fn block_doc_comments_lose_their_stars() {
        let f: ItemFn = syn::parse_str(
            "/**\n * Process a new order.\n *\n * * charges the card\n *   once\n */\nasync fn f() {}",
        )
        .unwrap();
        assert_eq!(
            doc_comment(&f.attrs).plain(),
            "Process a new order.\n\n* charges the card\nonce"
        );
        // The line after `/**` may go without one.
        let f: ItemFn =
            syn::parse_str("/** Totals:\n * net\n * gross\n */\nasync fn f() {}").unwrap();
        assert_eq!(doc_comment(&f.attrs).plain(), "Totals:\nnet\ngross");
        // A later line without one: the stars are the text's.
        let f: ItemFn =
            syn::parse_str("/** Totals:\n * net\n   and gross */\nasync fn f() {}").unwrap();
        assert_eq!(doc_comment(&f.attrs).plain(), "Totals:\n* net\nand gross");
        // `///` lines starting with `*` are a Markdown list.
        let f = func(quote! {
            /// * fetch
            /// * charge
            async fn f() {}
        });
        assert_eq!(doc_comment(&f.attrs).plain(), "* fetch\n* charge");
    }

    #[test]
    fn doc_comments_end_before_headings_and_code() {
        let f = func(quote! {
            /// Process a new order.
            ///
            /// # Errors
            ///
            /// When the card is declined.
            async fn f() {}
        });
        assert_eq!(doc_comment(&f.attrs).plain(), "Process a new order.");
        let f = func(quote! {
            /// Process a new order, #1 priority.
            /// ```
            /// let x = 1;
            /// ```
            async fn f() {}
        });
        assert_eq!(
            doc_comment(&f.attrs).plain(),
            "Process a new order, #1 priority."
        );
        let f = func(quote! {
            /// Charges the card.
            ///
            /// ## Errors
            /// When it is declined.
            async fn f() {}
        });
        assert_eq!(doc_comment(&f.attrs).plain(), "Charges the card.");
        // A title first is skipped: the description was empty.
        let f = func(quote! {
            /// # Refund
            ///
            /// Refunds an order.
            ///
            /// # Errors
            /// When it was never paid.
            async fn f() {}
        });
        assert_eq!(doc_comment(&f.attrs).plain(), "Refunds an order.");
    }

    fn model(attr: proc_macro2::TokenStream, f: &ItemFn) -> (Option<String>, Vec<String>) {
        let mut errors = Errors::default();
        let args = Args::parse(attr, &mut errors);
        let wf = Workflow::from_syn(&args, f, &mut errors);
        // What the generated impl calls: a handler of the right shape that
        // cannot be called as written only has its types checked.
        let handler = wf.handler.filter(|h| h.callable).map(|h| {
            format!(
                "S={} I={} O={} E={}",
                h.state.as_ref().map_or_else(
                    || format!("<{} as HandlerCtx>", h.ctx.to_token_stream()),
                    |s| s.to_token_stream().to_string()
                ),
                h.input.to_token_stream(),
                h.output.to_token_stream(),
                h.error
                    .map(|e| e.to_token_stream().to_string())
                    .unwrap_or_default()
            )
        });
        (handler, errors.messages())
    }

    #[test]
    fn reads_handler_types() {
        let f = func(quote!(
            async fn f(_ctx: Ctx, input: In) -> workflow::Result<Out> {}
        ));
        assert_eq!(
            model(quote!(), &f),
            (Some("S=<Ctx as HandlerCtx> I=In O=Out E=".into()), vec![])
        );
        let f = func(quote!(
            async fn f(mut ctx: workflow::Ctx<St>, (a, b): (u8, u8)) -> Result<Out, MyErr> {}
        ));
        assert_eq!(
            model(quote!(), &f),
            (Some("S=St I=(u8 , u8) O=Out E=MyErr".into()), vec![])
        );
    }

    #[test]
    fn a_handler_that_is_not_async_still_has_its_types_checked() {
        let f = func(quote!(
            fn f(c: Ctx, i: NotSerde) -> Result<O> {}
        ));
        let mut errors = Errors::default();
        let args = Args::parse(quote!(), &mut errors);
        let wf = Workflow::from_syn(&args, &f, &mut errors);
        let handler = wf.handler.expect("its types are read");
        assert!(!handler.callable);
        assert_eq!(handler.input.to_token_stream().to_string(), "NotSerde");
        assert!(errors.messages()[0].contains("must be an `async fn`"));
    }

    #[test]
    fn rejects_bad_signatures() {
        let cases = [
            (
                quote!(
                    fn f(ctx: Ctx, i: I) -> Result<O> {}
                ),
                "must be an `async fn`",
            ),
            (
                quote!(
                    async fn f(ctx: Ctx) -> Result<O> {}
                ),
                "found 1",
            ),
            (
                quote!(
                    async fn f() -> Result<O> {}
                ),
                "found none",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I, x: X) -> Result<O> {}
                ),
                "found 3",
            ),
            (
                quote!(
                    async fn f(i: I, c: Ctx) -> Result<O> {}
                ),
                "the context comes first",
            ),
            (
                quote!(
                    async fn f(i: I, c: J) -> Result<O> {}
                ),
                "must be the workflow context",
            ),
            (
                quote!(
                    async fn f(c: &Ctx, i: I) -> Result<O> {}
                ),
                "by value",
            ),
            (
                quote!(
                    async fn f(c: Ctx<A, B>, i: I) -> Result<O> {}
                ),
                "one type argument",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I) -> O {}
                ),
                "must return a `Result`",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I) {}
                ),
                "must return a `Result`",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I) -> std::fmt::Result {}
                ),
                "must return a `Result`",
            ),
            (
                quote!(
                    async fn f<T>(c: Ctx, i: T) -> Result<O> {}
                ),
                "cannot be generic",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: impl Trait) -> Result<O> {}
                ),
                "not `impl Trait`",
            ),
            (
                quote!(
                    async fn f(self, c: Ctx, i: I) -> Result<O> {}
                ),
                "not a method",
            ),
            (
                quote!(
                    async unsafe fn f(c: Ctx, i: I) -> Result<O> {}
                ),
                "cannot be `unsafe`",
            ),
            (
                quote!(
                    async fn Big(c: Ctx, i: I) -> Result<O> {}
                ),
                "would clash",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: Vec<impl Trait>) -> Result<O> {}
                ),
                "input must be a concrete type, not `impl Trait`",
            ),
            (
                quote!(
                    async fn f(c: Ctx<impl Default>, i: I) -> Result<O> {}
                ),
                "state must be a concrete type",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I) -> anyhow::Result<impl Serialize> {}
                ),
                "output must be a concrete type",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: (&str, u32)) -> Result<O> {}
                ),
                "input cannot borrow",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: Option<Cow<'a, str>>) -> Result<O> {}
                ),
                "input cannot borrow",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: Option<std::borrow::Cow<str>>) -> Result<O> {}
                ),
                "input cannot borrow",
            ),
            (
                quote!(
                    async fn f(c: Ctx<&'static str>, i: I) -> Result<Wrapper<'_>> {}
                ),
                "output cannot borrow",
            ),
            (
                quote!(
                    async fn f(c: Ctx, i: I) -> Result<O, &'a MyError> {}
                ),
                "error type cannot borrow",
            ),
            (
                quote!(
                    async fn workflow(c: Ctx, i: I) -> Result<O> {}
                ),
                "would hide `Workflow` of `workflow::prelude`",
            ),
        ];
        // Borrows of a function's own parameters are not the type's.
        for ok in [
            quote!(
                async fn f(c: Ctx, i: PhantomData<fn(&str)>) -> Result<O> {}
            ),
            quote!(
                async fn f(c: Ctx, i: I) -> Result<O, Box<dyn Error + Send + Sync + 'static>> {}
            ),
            quote!(
                async fn f(c: Ctx, i: Cow<'static, str>) -> Result<&'static str> {}
            ),
            // A type of the user's own named `Cow`.
            quote!(
                async fn f(c: Ctx, i: Cow) -> Result<O> {}
            ),
            quote!(
                async fn f(c: Ctx, i: Holder<Box<dyn for<'a> Fn(&'a str)>>) -> Result<O> {}
            ),
        ] {
            let f = func(ok.clone());
            let (_, errors) = model(quote!(), &f);
            assert!(errors.is_empty(), "{ok}: {errors:?}");
        }
        for (tokens, expected) in cases {
            let f = func(tokens.clone());
            let (handler, errors) = model(quote!(), &f);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{tokens}: expected an error containing {expected:?}, got {errors:?}"
            );
            if !["clash", "usable", "hide"]
                .iter()
                .any(|e| expected.contains(e))
            {
                assert!(handler.is_none(), "{tokens}: no handler expected");
            }
        }
    }

    #[test]
    fn collects_errors_from_attribute_and_signature_together() {
        let f = func(quote! {
            fn f(ctx: Ctx, i: I) -> Result<O> {
                ctx.step("a", f);
                ctx.step("a", f);
            }
        });
        let (_, errors) = model(quote!(schedule = "61 * * * *", timeout = "soon"), &f);
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn defaults() {
        let f = func(quote!(
            async fn process_order(c: Ctx, i: I) -> Result<O> {}
        ));
        let mut errors = Errors::default();
        let args = Args::default();
        let wf = Workflow::from_syn(&args, &f, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(wf.name, "process_order");
        assert_eq!(
            wf.struct_ident.map(|i| i.to_string()).as_deref(),
            Some("ProcessOrder")
        );
        assert_eq!(wf.timezone, "UTC");
        assert_eq!(wf.timeout, Duration::from_secs(300));
        assert_eq!(wf.schedule, None);
        assert!(wf.description.is_empty());
        assert_eq!(wf.krate.to_token_stream().to_string(), ":: workflow");
    }
}
