// Edit this file: Vite swaps the module in place (hot module replacement), no reload.
const button = document.querySelector("#counter");
let count = 0;
button.onclick = () => {
  count += 1;
  button.textContent = `count is ${count}`;
};

if (import.meta.hot) {
  import.meta.hot.accept();
}
